"""The ``save_pretrained`` / ``push_to_hub`` hooks of every rwkv_hf model (see
:mod:`rwkv_hf.hub_folder`). This file is also part of the flat remote code; there, without
rwkv_hf, the hooks step aside and transformers' own behaviour remains."""


def _hub_folder():
    try:
        from . import hub_folder
    except ImportError:  # remote code without rwkv_hf
        return None
    return hub_folder


class RwkvHubMixin:
    """Makes ``save_pretrained`` write a Hub-ready folder (``auto_map``, flat remote code,
    model card, the family's companion files) and ``push_to_hub`` upload rwkv_hf's card.
    A family sets ``hub_family`` and implements ``hub_auto_classes``; ``save_companions``
    writes its tokenizer or processor files (before the card, which mentions them)."""

    hub_family = None

    def hub_auto_classes(self):
        """{Auto class name: this version's model class} for the ``auto_map``."""
        raise NotImplementedError

    def save_companions(self, save_directory):
        """Write files the folder needs besides the weights (tokenizer, processor)."""

    def save_pretrained(self, save_directory, *args, remote_code=True, **kwargs):
        """transformers' save_pretrained, Hub-ready: ``auto_map`` and flat remote code (the folder
        loads with ``trust_remote_code=True`` where rwkv_hf is not installed), the family's
        tokenizer / image processor files when the folder has none, a model card (an existing
        README.md is kept). ``remote_code=False`` writes neither remote code nor card (e.g. the
        tiny models shipped inside rwkv_hf)."""
        hub = _hub_folder() if remote_code else None
        if hub is not None:
            hub.before_save(self, self.hub_family, self.hub_auto_classes())
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            self.save_companions(save_directory)
            if hub is not None:
                hub.after_save(self, self.hub_family, save_directory)
        return result

    def push_to_hub(self, repo_id, *args, **kwargs):
        """transformers' push_to_hub of the Hub-ready folder; a repository without a README.md
        first gets rwkv_hf's model card (transformers would upload a generic one)."""
        hub = _hub_folder()
        if hub is not None:
            repo_id = hub.push_card_first(self, repo_id, token=kwargs.get("token"), private=kwargs.get("private"))
        return super().push_to_hub(repo_id, *args, **kwargs)
