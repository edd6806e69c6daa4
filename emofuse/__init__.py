"""emofuse: speech + text emotion recognition on frozen self-supervised encoders.

Stages (docs/design.md): ``corpora`` → ``extract`` → ``store`` → ``align`` →
``heads`` + ``pipelines``.
"""

__version__ = "0.1.0"
