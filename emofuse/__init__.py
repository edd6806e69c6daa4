"""emofuse: speech + text emotion recognition on frozen self-supervised encoders.

Stages (docs/design.md): ``corpora`` → ``extract`` → ``store`` → ``align`` →
``heads`` + ``pipelines``.
"""

__version__ = "0.1.0"


def load_model(path: str):
    """A trained configuration from an exported folder (``emofuse export``) or a train-head run
    directory: ``model.predict(audio=[...], text=[...])`` gives class probabilities."""
    from .pipelines.predict import load_model as _load

    return _load(path)
