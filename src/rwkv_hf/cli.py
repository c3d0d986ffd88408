"""The ``rwkv-hf`` command line."""
import argparse
import json
import sys


def _demo(args):
    if args.ops:
        from .ops_demo import main as ops_demo_main

        return ops_demo_main(seq_len=args.seq_len)
    from .demo import main as demo_main
    from .demo import vision_main

    status = 0
    if not args.vision:
        status = demo_main(max_new_tokens=args.max_new_tokens, seed=args.seed)
    if not args.lm and status == 0:
        if not args.vision:
            print()
        status = vision_main()
    return status


def _build_cuda(args):
    from .ops import cuda_backend

    if cuda_backend.find_cuda_home() is None:
        print("rwkv-hf build-cuda: nvcc not found; install the CUDA toolkit or set CUDA_HOME", file=sys.stderr)
        return 1
    try:
        path = cuda_backend.build(args.arch, verbose=args.verbose)
    except (RuntimeError, ValueError) as e:
        print(f"rwkv-hf build-cuda: {e}", file=sys.stderr)
        return 1
    print(f"built the rwkv_hf CUDA extension for {args.arch}: {path}")
    return 0


def _parse_settings(items):
    """``["post_norm=true", "image_size=[384, 384]"]`` -> a dict; values are JSON, else strings."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def _convert(args):
    from .conversion.convert import convert

    try:
        overrides = _parse_settings(args.set)
        convert(args.src, args.dst, trust_pickle=args.trust_pickle, overwrite=args.overwrite,
                config_overrides=overrides)
    except KeyboardInterrupt:
        print("rwkv-hf convert: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:  # one paragraph, no traceback: the message names the file and key
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"rwkv-hf convert: error: {message}", file=sys.stderr)
        return 1
    return 0


def _publish(args):
    import warnings

    from .publish import publish

    def show(message, *_args, **_kwargs):  # warnings as one line each, as they happen
        print(f"rwkv-hf publish: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            publish(args.folder, args.repo_id, token=args.token, private=args.private, commit_message=args.message)
    except KeyboardInterrupt:
        print("rwkv-hf publish: interrupted before the commit returned; check the repo", file=sys.stderr)
        return 130
    except Exception as e:  # one line, no traceback
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"rwkv-hf publish: error: {message}", file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="rwkv-hf", description="RWKV models for Hugging Face transformers")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="load the shipped tiny RWKV-7 (perplexity, generated text), the tiny "
                                       "Vision-RWKVs (held-out digit accuracy through the image-classification "
                                       "pipeline) and the tiny Restore-RWKV (held-out denoising PSNR); --ops: "
                                       "tour the WKV operators instead")
    part = demo.add_mutually_exclusive_group()
    part.add_argument("--lm", action="store_true", help="only the language model")
    part.add_argument("--vision", action="store_true", help="only the image models")
    demo.add_argument("--max-new-tokens", type=int, default=40, help="tokens per generated continuation (default 40)")
    demo.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    demo.add_argument("--ops", action="store_true",
                      help="run every WKV operator on both backends and compare them instead")
    demo.add_argument("--seq-len", type=int, default=1024, help="with --ops: tokens per sequence (default 1024)")
    demo.set_defaults(func=_demo)
    build = sub.add_parser("build-cuda", help="compile the WKV CUDA extension ahead of time (no GPU needed)")
    build.add_argument("--arch", default="8.0,9.0",
                       help="comma-separated compute capabilities, e.g. 8.0,9.0 (default) or 9.0+PTX")
    build.add_argument("--verbose", action="store_true", help="show the compiler's output")
    build.set_defaults(func=_build_cuda)
    conv = sub.add_parser(
        "convert", help="convert an RWKV checkpoint (BlinkDL .pth, transformers, Hub v5/v6, fla RWKV-7, official "
                        "Vision-RWKV mmcls/InternImage .pth, official Restore-RWKV .pth) into an "
                        "rwkv_hf folder, or an rwkv_hf folder into a BlinkDL .pth (DST ending in .pth)",
        description="SRC: a .pth/.bin/.safetensors file or a Hugging Face folder; layout and version are "
                    "detected from the tensor names. DST ending in .pth: SRC must be an rwkv_hf folder of a "
                    "language model (written in BlinkDL's layout) or of Restore-RWKV (the official state dict); "
                    "otherwise DST is a new rwkv_hf folder (config, "
                    "model.safetensors, generation config, tokenizer for known vocabularies, model card).")
    conv.add_argument("src", metavar="SRC", help="checkpoint file or model folder")
    conv.add_argument("dst", metavar="DST", help="output folder, or output .pth file")
    conv.add_argument("--trust-pickle", action="store_true",
                      help="DANGEROUS: allow pickled checkpoints that hold arbitrary Python objects; loading them "
                           "executes code from the file. Only for files from a source you trust.")
    conv.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    conv.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="a config field the checkpoint does not record, e.g. --set post_norm=true for a "
                           "Vision-RWKV checkpoint without metadata (value as JSON); repeatable")
    conv.set_defaults(func=_convert)
    pub = sub.add_parser(
        "publish", help="upload an rwkv_hf model folder to the Hugging Face Hub",
        description="Checks FOLDER (config.json of an rwkv_hf model type, complete safetensors weights) before "
                    "any network call, creates REPO_ID if needed and uploads the folder in one commit, skipping "
                    "*.partial* and __pycache__. Token: --token, else HF_TOKEN or the saved `hf auth login`; "
                    "endpoint: HF_ENDPOINT (default https://huggingface.co).")
    pub.add_argument("folder", metavar="FOLDER", help="an rwkv_hf model folder (e.g. written by rwkv-hf convert)")
    pub.add_argument("repo_id", metavar="REPO_ID", help="the model repo, e.g. user/rwkv7-tiny")
    pub.add_argument("--private", action="store_true", help="create the repo as private")
    pub.add_argument("--message", "-m", metavar="M", help="commit message")
    pub.add_argument("--token", metavar="T", help="Hugging Face access token (default: HF_TOKEN or saved login)")
    pub.set_defaults(func=_publish)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
