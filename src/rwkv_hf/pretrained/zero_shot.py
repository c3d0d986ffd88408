"""Zero-shot digit classification with the shipped tiny RWKV-CLIP (used by its training
script, ``rwkv-hf demo`` and the tests)."""
import torch
import torch.nn.functional as F

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def class_captions(template, words=DIGIT_WORDS):
    """The caption of each class: ``template.format(word)``."""
    return [template.format(w) for w in words]


def zero_shot_predictions(model, processor, pixel_values, template, words=DIGIT_WORDS, batch=256):
    """For each image of ``pixel_values``, the index of the most similar caption of
    :func:`class_captions` (cosine similarity of the RWKV-CLIP embeddings)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        text = processor.tokenizer(class_captions(template, words), padding=True, return_tensors="pt")
        t = F.normalize(model.get_text_features(**text).pooler_output, dim=-1)
        preds = []
        for i in range(0, len(pixel_values), batch):
            v = F.normalize(model.get_image_features(pixel_values[i:i + batch]).pooler_output, dim=-1)
            preds.append((v @ t.T).argmax(-1))
    model.train(was_training)
    return torch.cat(preds)


def zero_shot_accuracy(model, processor, pixel_values, labels, template, words=DIGIT_WORDS):
    """The fraction of images whose most similar caption is their class's."""
    preds = zero_shot_predictions(model, processor, pixel_values, template, words)
    return (preds == torch.as_tensor(labels)).float().mean().item()
