"""The ``rwkv-hf`` command line."""
import argparse
import sys


def _demo(args):
    from .demo import main as demo_main

    return demo_main(seq_len=args.seq_len)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="rwkv-hf", description="RWKV models for Hugging Face transformers")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run every WKV operator on both backends and compare them")
    demo.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence (default 1024)")
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
