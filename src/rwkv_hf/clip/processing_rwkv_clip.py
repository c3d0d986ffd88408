"""The RWKV-CLIP processor: transformers' ``CLIPProcessor`` with the open_clip BPE tokenizer
and the open_clip evaluation transform, as the official RWKV-CLIP code uses them.

* Text: OpenAI CLIP's byte-level BPE (``bpe_simple_vocab_16e6.txt.gz``, vendored in
  ``rwkv_hf/tokenizer_files``, MIT): 49,408 ids, ``<|startoftext|>`` 49406 and
  ``<|endoftext|>`` 49407 around every text, lower-cased; long texts keep the first 75
  tokens between the two, as open_clip's truncation. The official ``tokenize`` pads with id 0
  to 77 tokens; the text tower does that itself (it replaces the positions ``attention_mask``
  marks as padding by id 0 and pads to its context length), so any padding gives the official
  embeddings as long as the attention mask comes along. Unlike open_clip, the tokenizer does
  not run ``ftfy.fix_text`` and ``html.unescape`` first: texts with curly quotes, HTML entities
  or mojibake tokenize differently unless cleaned that way beforehand.
* Images: resize the shorter side to 224 (bicubic), centre-crop 224 x 224, RGB, OpenAI's
  mean / std (open_clip's ``image_transform(224, is_train=False)``). One difference: when the
  resized image's margin is odd, transformers' centre crop starts half a pixel earlier (floor)
  than torchvision's (round half to even), so the crop is one pixel to the left or top.
"""
import gzip
import os

_VOCAB_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tokenizer_files",
                           "bpe_simple_vocab_16e6.txt.gz")

# OpenAI's dataset statistics (open_clip ``OPENAI_DATASET_MEAN`` / ``_STD``)
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
NUM_MERGES = 49152 - 256 - 2  # the merges open_clip / CLIP read from the file
VOCAB_SIZE = 2 * 256 + NUM_MERGES + 2  # 49408


def byte_symbols():
    """The 256 printable stand-ins of the bytes (byte-level BPE): the printable Latin-1
    bytes stand for themselves, the others for chr(256 + n) in byte order; listed in the
    vocabulary's order (the printable ones first)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    others = [b for b in range(256) if b not in set(printable)]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def clip_vocab(path=_VOCAB_FILE):
    """(vocab {token: id}, merges ["a b", ...]) of the CLIP BPE file at ``path``: the byte
    symbols, the same with the end-of-word mark ``</w>``, one token per merge, then the two
    special tokens."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1:1 + NUM_MERGES]
    if len(merges) != NUM_MERGES or any(len(m.split()) != 2 for m in merges):
        raise ValueError(f"{path} is not a CLIP BPE merges file ({NUM_MERGES} merges expected)")
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def rwkv_clip_tokenizer(context_length=77, path=_VOCAB_FILE):
    """transformers' ``CLIPTokenizer`` on the CLIP BPE (``context_length`` tokens at most)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab(path)
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges],
                         model_max_length=context_length)


def default_image_processor(vision_config=None):
    """The RWKV-CLIP ``CLIPImageProcessor``: open_clip's evaluation transform at the vision
    tower's resolution (224 by default)."""
    from transformers import CLIPImageProcessor

    size = 224
    if vision_config is not None:
        hw = vision_config.image_hw
        if hw[0] != hw[1]:
            raise ValueError(f"the RWKV-CLIP processor crops squares; the vision tower is {hw[0]}x{hw[1]}")
        size = hw[0]
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              do_center_crop=True, resample=3, image_mean=OPENAI_MEAN, image_std=OPENAI_STD,
                              do_convert_rgb=True)


def default_processor(vision_config=None, context_length=77):
    """The RWKV-CLIP ``CLIPProcessor``: :func:`default_image_processor` and the CLIP tokenizer."""
    from transformers import CLIPProcessor

    return CLIPProcessor(image_processor=default_image_processor(vision_config),
                         tokenizer=rwkv_clip_tokenizer(context_length))
