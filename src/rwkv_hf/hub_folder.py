"""What ``save_pretrained`` of rwkv_hf's models adds to make a folder Hub-ready (called by
:class:`rwkv_hf.hub_mixin.RwkvHubMixin`).

Before transformers writes ``config.json``: an ``auto_map`` naming AutoConfig and the
family's Auto classes (:mod:`rwkv_hf.remote_code`). After it wrote the weights (and the
family its tokenizer or image processor): the flat remote code and a model card
``README.md`` (:mod:`rwkv_hf.model_card`; an existing one is kept).
"""
from . import remote_code
from .model_card import write_model_card


def before_save(model, family, classes):
    """Set ``model.config.auto_map`` (``classes``: {Auto class name: model class})."""
    model.config.auto_map = remote_code.auto_map(family, type(model.config), classes)


def after_save(model, family, folder):
    """Write the remote code and the model card."""
    remote_code.write_bundle(family, folder)
    write_model_card(model, folder)


def push_card_first(model, repo_id, token=None, private=None):
    """Prepare a ``push_to_hub``: transformers keeps the README.md a repo already has and
    otherwise uploads a generic card, so give a repo without one rwkv_hf's card first (one
    extra commit). Returns the full repo id."""
    from huggingface_hub import HfApi

    from .model_card import model_card

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if "README.md" not in api.list_repo_files(repo_id):
        card = model_card(model, repo_id=repo_id)
        api.upload_file(path_or_fileobj=str(card).encode(), path_in_repo="README.md", repo_id=repo_id,
                        commit_message="Add the model card (rwkv_hf)")
    return repo_id
