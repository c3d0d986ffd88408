"""The tiny model's corpus: the CPython reference documentation in ``pydoc_data.topics``.

``pydoc_data.topics.topics`` (shipped with every CPython, PSF License 2.0) maps about 80
help topics ("assert", "class", "string-methods", ...) to their plain-text reference
pages. The split is by topic and fixed: topics are sorted by name and every
``VAL_EVERY``-th one, starting at ``VAL_OFFSET``, is held out for validation (about 8%).
The training script, the demo and the tests all build the split here, so the held-out
text is reproducible without the training script.

The text of ``pydoc_data`` changes between Python versions; :func:`corpus_fingerprint`
identifies the exact text (the shipped ``eval.json`` records the one it was measured on).
"""
import hashlib
import math

import torch

VAL_EVERY = 12
VAL_OFFSET = 5
EOT = "<|endoftext|>"  # id 0: end-of-text, used as bos / eos / pad


def topics():
    """``{name: text}`` of every reference topic, sorted by name."""
    from pydoc_data.topics import topics as raw

    return {name: raw[name] for name in sorted(raw)}


def split_topics():
    """``(train_names, val_names)``: every VAL_EVERY-th sorted topic name is held out."""
    names = sorted(topics())
    val = [n for i, n in enumerate(names) if i % VAL_EVERY == VAL_OFFSET]
    train = [n for i, n in enumerate(names) if i % VAL_EVERY != VAL_OFFSET]
    return train, val


def documents(split):
    """The texts of the ``"train"`` or ``"val"`` split, in sorted topic order."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    train, val = split_topics()
    text = topics()
    return [text[n] for n in (train if split == "train" else val)]


def corpus_fingerprint(split="val"):
    """sha256 of a split's text (topic names and contents), to tell pydoc_data versions apart."""
    h = hashlib.sha256()
    train, val = split_topics()
    text = topics()
    for name in train if split == "train" else val:
        h.update(name.encode() + b"\0" + text[name].encode() + b"\0")
    return h.hexdigest()


def token_stream(tokenizer, docs, eot_id=0):
    """One id stream ``[eot, doc0..., eot, doc1..., ..., eot]``: each document follows an
    end-of-text token, as in training."""
    ids = [eot_id]
    for doc in docs:
        ids.extend(tokenizer.encode(doc, add_special_tokens=False))
        ids.append(eot_id)
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def evaluate(model, tokenizer, split="val", ctx_len=256, batch_size=16, eot_id=0):
    """Next-token loss of ``model`` on a split, every token after the first predicted once.

    The stream is cut into windows of ``ctx_len + 1`` tokens overlapping by one, so each
    window predicts ``ctx_len`` fresh tokens from a fresh state (no carried context).
    Returns a dict: ``tokens`` (predicted), ``bytes`` (UTF-8 bytes of the documents plus
    one per predicted end-of-text separator), ``loss`` (mean nats per token),
    ``perplexity`` (per token) and ``bits_per_byte``.
    """
    docs = documents(split)
    ids = token_stream(tokenizer, docs, eot_id)
    n_pred = ids.numel() - 1
    windows = []
    for start in range(0, n_pred, ctx_len):
        windows.append(ids[start:start + ctx_len + 1])
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        width = max(w.numel() for w in chunk)
        x = torch.full((len(chunk), width), eot_id, dtype=torch.long)
        y = torch.full((len(chunk), width), -100, dtype=torch.long)
        for j, w in enumerate(chunk):
            x[j, :w.numel()] = w
            y[j, :w.numel() - 1] = w[1:]
        logits = model(input_ids=x[:, :-1]).logits.float()
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y[:, :-1].reshape(-1), ignore_index=-100,
            reduction="sum").item()
    if was_training:
        model.train()
    n_bytes = sum(len(d.encode("utf-8")) for d in docs) + len(docs)  # + one byte per separator
    loss = total / n_pred
    return {"split": split, "tokens": n_pred, "bytes": n_bytes, "loss": loss, "perplexity": math.exp(loss),
            "bits_per_byte": total / math.log(2) / n_bytes}


def unigram_baseline(tokenizer, vocab_size, eot_id=0):
    """Per-token perplexity on the validation split of an add-one-smoothed unigram model
    fitted on the training split (the same tokens :func:`evaluate` predicts)."""
    train = token_stream(tokenizer, documents("train"), eot_id)
    val = token_stream(tokenizer, documents("val"), eot_id)[1:]
    counts = torch.bincount(train, minlength=vocab_size).double() + 1.0
    logp = counts.log() - counts.sum().log()
    return math.exp(-logp[val].mean().item())
