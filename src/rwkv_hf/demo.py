"""``rwkv-hf demo``: the project's own tiny models, loaded like any Hub model.

Loads ``rwkv_hf/pretrained/tiny-rwkv7-pydoc`` (trained by ``examples/train_tiny_lm.py``
on the CPython reference documentation) with ``AutoModelForCausalLM`` and
``AutoTokenizer``, recomputes its validation perplexity on the held-out topics of
``pydoc_data.topics`` (:mod:`rwkv_hf.pretrained.corpus`) and generates continuations
of a few Python-documentation prompts, greedy and sampled. Then classifies the held-out
handwritten digits of ``rwkv_hf/pretrained/tiny-vrwkv-digits`` (a tiny Vision-RWKV trained by
``examples/train_tiny_vrwkv.py``) through ``pipeline("image-classification")`` and reports
the accuracy, classifies them zero-shot with ``rwkv_hf/pretrained/tiny-rwkv-clip-digits`` (a
tiny RWKV-CLIP trained by ``examples/train_tiny_rwkv_clip.py``) through
``pipeline("zero-shot-image-classification")``, and denoises the held-out photograph crop of
``rwkv_hf/pretrained/tiny-restore-rwkv-denoise`` (a tiny Restore-RWKV trained by
``examples/train_tiny_restore_rwkv.py``), reporting its PSNR next to the noisy input's and
the best Gaussian blur's, and classifies and segments the held-out synthetic objects of
``rwkv_hf/pretrained/tiny-pointrwkv-shapes`` and ``tiny-pointrwkv-parts`` (tiny PointRWKVs trained by
``examples/train_tiny_pointrwkv.py``). ``--lm`` / ``--vision`` run one part only (the language
model; the image and point-cloud models); ``rwkv-hf demo --ops`` runs the operator-layer tour instead
(:mod:`rwkv_hf.ops_demo`).
"""
import json
import os
import textwrap
import time

import torch

PROMPTS = [
    "The \"while\" statement is used",
    "A list is a mutable sequence",
    "   >>> def f(x):\n",
]


def _quiet(threads):
    """Thread count, and no transformers warnings or progress bars in the demo's output."""
    import transformers

    if threads:
        torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _show(label, text):
    print(f"{label}:")
    print(textwrap.indent(text.rstrip(), "    | ", lambda line: True))
    print()


def main(max_new_tokens=40, seed=0, threads=None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import rwkv_hf  # noqa: F401  (registers model_type rwkv_hf_v7 with the Auto classes)
    from .pretrained import corpus, tiny_model_path

    _quiet(threads)
    path = tiny_model_path()
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    with open(os.path.join(path, "eval.json")) as f:
        shipped = json.load(f)
    n_params = sum(p.numel() for p in model.parameters())
    cfg = model.config
    print(f"rwkv_hf tiny model: {type(model).__name__} from {path}")
    print(f"  RWKV-7, {cfg.num_hidden_layers} layers x {cfg.hidden_size} wide ({cfg.num_heads} heads of "
          f"{cfg.head_size}), {n_params:,} parameters, {len(tokenizer)}-token byte-level BPE "
          f"(loaded in {time.perf_counter() - t0:.1f}s)")
    print("  trained by examples/train_tiny_lm.py on the CPython reference docs (pydoc_data.topics, "
          "PSF License 2.0)")
    from .lm import cpu_fused

    fused, why = cpu_fused.available()
    print("  CPU inference: " + ("fused blocks (one C call each, matmuls on torch's BLAS)" if fused
                                 else f"eager blocks ({why})") + "\n")

    t0 = time.perf_counter()
    val = corpus.evaluate(model, tokenizer, "val", ctx_len=shipped["eval_ctx_len"])
    same_text = corpus.corpus_fingerprint("val") == shipped["corpus"]["val_sha256"]
    ref = shipped["validation"]
    print(f"validation ({len(shipped['val_topics'])} held-out topics: {', '.join(shipped['val_topics'])})")
    print(f"  {val['tokens']:,} tokens, {val['bytes']:,} bytes: perplexity {val['perplexity']:.2f} per token, "
          f"{val['bits_per_byte']:.3f} bits/byte ({time.perf_counter() - t0:.1f}s)")
    if same_text:
        print(f"  eval.json (at training time): perplexity {ref['perplexity']:.2f}, "
              f"{ref['bits_per_byte']:.3f} bits/byte; unigram baseline {shipped['unigram_baseline_perplexity']:.1f}")
    else:
        print(f"  note: this Python's pydoc_data differs from the training one (Python "
              f"{shipped['corpus']['python']}), so the numbers differ from eval.json's "
              f"{ref['perplexity']:.2f}")
    print()

    t0 = time.perf_counter()
    for i, prompt in enumerate(PROMPTS):
        ids = tokenizer(tokenizer.bos_token + prompt, return_tensors="pt").input_ids
        n = ids.shape[1]
        with torch.no_grad():
            greedy = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
            torch.manual_seed(seed + i)
            sampled = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8,
                                     top_p=0.9)
        print(f"prompt {prompt!r}")
        _show("  greedy", prompt + tokenizer.decode(greedy[0, n:], skip_special_tokens=True))
        _show("  sampled (T=0.8, top-p 0.9)", prompt + tokenizer.decode(sampled[0, n:], skip_special_tokens=True))
    print(f"({2 * len(PROMPTS)} continuations of up to {max_new_tokens} tokens in {time.perf_counter() - t0:.1f}s)")
    return 0


def vision_main(threads=None):
    """Classify every held-out digit with the two tiny Vision-RWKVs (VRWKV, VRWKV6) through the
    image-classification pipeline and with the tiny RWKV-CLIP through the zero-shot pipeline,
    printing the accuracy next to the one recorded at training time; then denoise the tiny
    Restore-RWKV's held-out image; then classify and segment the tiny PointRWKVs' held-out
    synthetic objects."""
    import rwkv_hf  # noqa: F401  (registers rwkv_hf_vrwkv / rwkv_hf_vrwkv6 and the image processor)

    _quiet(threads)
    for version in (4, 6):
        _classify_digits(version)
        print()
    _zero_shot_digits()
    print()
    _denoise()
    print()
    _point_clouds()
    return 0


def _digits_pipeline(task, path):
    """(the ``task`` pipeline of the shipped digit model at ``path``, its eval.json, its held-out
    images as PIL RGB images, their labels)."""
    from PIL import Image
    from safetensors.torch import load_file
    from transformers import pipeline

    classify = pipeline(task, model=path, device="cpu")
    with open(os.path.join(path, "eval.json")) as f:
        shipped = json.load(f)
    data = load_file(os.path.join(path, "heldout.safetensors"))
    images = [Image.fromarray(im.numpy()).convert("RGB") for im in data["images"]]
    return classify, shipped, images, data["labels"].tolist()


def _zero_shot_digits():
    from .pretrained import DIGIT_WORDS, tiny_clip_model_path

    path = tiny_clip_model_path()
    t0 = time.perf_counter()
    classify, shipped, images, labels = _digits_pipeline("zero-shot-image-classification", path)
    cfg = classify.model.config
    v, t = cfg.vision_config, cfg.text_config
    n_params = sum(p.numel() for p in classify.model.parameters())
    print(f"rwkv_hf tiny image-text model: {type(classify.model).__name__} from {path}")
    print(f"  RWKV-CLIP: image tower VRWKV6 {v.num_hidden_layers} blocks x {v.hidden_size}, text tower "
          f"{t.num_hidden_layers} bidirectional RWKV-6 blocks x {t.hidden_size} (CLIP BPE), {n_params:,} parameters "
          f"(loaded in {time.perf_counter() - t0:.1f}s)")
    print("  trained by examples/train_tiny_rwkv_clip.py on scikit-learn's digits paired with captions naming them")
    for kind in ("seen", "unseen"):
        template = shipped["templates"][kind]
        t0 = time.perf_counter()
        tops = classify(images, candidate_labels=DIGIT_WORDS, hypothesis_template=template, batch_size=64)
        seconds = time.perf_counter() - t0
        correct = sum(DIGIT_WORDS.index(top[0]["label"]) == y for top, y in zip(tops, labels))
        recorded = shipped["zero_shot_accuracy" if kind == "seen" else "zero_shot_accuracy_unseen_template"]
        print(f"held-out digits through pipeline('zero-shot-image-classification'), captions {template!r} "
              f"({'a training' if kind == 'seen' else 'an unseen'} template): {correct}/{len(labels)} correct, "
              f"accuracy {100 * correct / len(labels):.2f}% ({len(labels) / seconds:.0f} images/s; eval.json: "
              f"{100 * recorded:.2f}%)")


def _denoise():
    from safetensors.torch import load_file
    from transformers import AutoModelForImageToImage

    from .pretrained import tiny_restore_model_path
    from .pretrained.denoise import denoise_baselines, psnr

    path = tiny_restore_model_path()
    t0 = time.perf_counter()
    model = AutoModelForImageToImage.from_pretrained(path).eval()
    with open(os.path.join(path, "eval.json")) as f:
        shipped = json.load(f)
    data = load_file(os.path.join(path, "heldout.safetensors"))
    clean, noisy = data["clean"].float() / 255, data["noisy"]
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    print(f"rwkv_hf tiny restoration model: {type(model).__name__} from {path}")
    print(f"  Restore-RWKV, width {cfg.hidden_size}, blocks per level {cfg.num_blocks} + {cfg.num_refinement_blocks} "
          f"refinement, {n_params:,} parameters (loaded in {time.perf_counter() - t0:.1f}s)")
    print("  trained by examples/train_tiny_restore_rwkv.py to remove Gaussian noise (sigma 25/255) from grey "
          "crops of scikit-learn's china.jpg")
    t0 = time.perf_counter()
    with torch.no_grad():
        restored = model(noisy).reconstruction
    seconds = time.perf_counter() - t0
    base = denoise_baselines(noisy, clean)
    h, w = clean.shape[-2:]
    print(f"held-out {h}x{w} crop of flower.jpg through AutoModelForImageToImage ({seconds:.2f}s): PSNR "
          f"{psnr(restored, clean):.2f} dB; noisy input {base['noisy_psnr_db']:.2f} dB, best Gaussian blur "
          f"{base['best_blur_psnr_db']:.2f} dB (sigma {base['best_blur_sigma']:.1f} px)")
    print(f"  eval.json (at training time): {shipped['heldout_psnr_db']:.2f} dB")


def _point_clouds():
    from safetensors.torch import load_file

    from .point import PointRwkvForPointCloudClassification, PointRwkvForPointCloudSegmentation
    from .pretrained import tiny_point_model_path
    from .pretrained.shapes import CATEGORIES, part_scores

    for task, cls in (("classify", PointRwkvForPointCloudClassification),
                      ("segment", PointRwkvForPointCloudSegmentation)):
        path = tiny_point_model_path(task)
        t0 = time.perf_counter()
        model = cls.from_pretrained(path).eval()
        with open(os.path.join(path, "eval.json")) as f:
            shipped = json.load(f)
        data = load_file(os.path.join(path, "heldout.safetensors"))
        cfg = model.config
        n_params = sum(p.numel() for p in model.parameters())
        print(f"rwkv_hf tiny point-cloud model: {cls.__name__} from {path}")
        print(f"  PointRWKV, width {cfg.hidden_size} ({cfg.num_heads} heads), scales of {cfg.num_groups} centres, "
              f"{n_params:,} parameters (loaded in {time.perf_counter() - t0:.1f}s)")
        print(f"  trained by examples/train_tiny_pointrwkv.py on synthetic objects ({', '.join(CATEGORIES)}; "
              "rwkv_hf.pretrained.shapes)")
        points, categories = data["points"], data["categories"]
        t0 = time.perf_counter()
        with torch.no_grad():
            if task == "classify":
                correct = int((model(points).logits.argmax(-1) == categories).sum())
                print(f"held-out objects ({len(points)} clouds of {points.shape[1]} points): {correct}/{len(points)} "
                      f"correct, accuracy {100 * correct / len(points):.2f}% ({time.perf_counter() - t0:.2f}s); "
                      f"eval.json: {100 * shipped['heldout_accuracy']:.2f}%")
            else:
                scores = part_scores(model(points, categories=categories).logits, categories, data["parts"])
                print(f"held-out objects' parts ({len(points)} clouds): point accuracy "
                      f"{100 * scores['heldout_point_accuracy']:.2f}%, instance mIoU "
                      f"{100 * scores['heldout_instance_miou']:.2f}% ({time.perf_counter() - t0:.2f}s); eval.json: "
                      f"{100 * shipped['heldout_point_accuracy']:.2f}%, {100 * shipped['heldout_instance_miou']:.2f}%")
        if task == "classify":
            print()


def _classify_digits(version):
    from .pretrained import tiny_vision_model_path

    path = tiny_vision_model_path(version)
    t0 = time.perf_counter()
    classify, shipped, images, labels = _digits_pipeline("image-classification", path)
    cfg = classify.model.config
    n_params = sum(p.numel() for p in classify.model.parameters())
    name = "VRWKV6" if version == 6 else "VRWKV"
    heads = f" ({cfg.num_heads} heads of {cfg.head_size})" if version == 6 else ""
    print(f"rwkv_hf tiny vision model: {type(classify.model).__name__} from {path}")
    print(f"  {name}, {cfg.num_hidden_layers} blocks x {cfg.hidden_size} wide{heads}, {cfg.patch_size}x{cfg.patch_size} "
          f"patches of a {cfg.image_size}x{cfg.image_size} input, {n_params:,} parameters (loaded in "
          f"{time.perf_counter() - t0:.1f}s)")
    print("  trained by examples/train_tiny_vrwkv.py on scikit-learn's handwritten digits (UCI, CC BY 4.0)")
    t0 = time.perf_counter()
    predictions = [int(top[0]["label"]) for top in classify(images, top_k=1, batch_size=64)]
    seconds = time.perf_counter() - t0
    wrong = [(i, p, y) for i, (p, y) in enumerate(zip(predictions, labels)) if p != y]
    acc = 1 - len(wrong) / len(labels)
    print(f"held-out digits through pipeline('image-classification'): {len(labels) - len(wrong)}/{len(labels)} "
          f"correct, accuracy {100 * acc:.2f}% ({len(labels) / seconds:.0f} images/s)")
    print(f"  eval.json (at training time): {100 * shipped['heldout_accuracy']:.2f}%")
    for i, p, y in wrong[:3]:
        print(f"  missed: held-out image {i} is a {y}, predicted {p}")
