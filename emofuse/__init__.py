"""emofuse: speech + text emotion recognition on frozen self-supervised encoders.

Stages (see docs and DESIGN.md): ``corpora`` → ``extract`` → ``store`` → ``align`` →
``heads`` + ``pipelines``.
"""

__version__ = "0.1.0"
