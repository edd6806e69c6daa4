"""pipelines: the commands' jobs (extract, align, train, ablate, finetune, report), see docs/design.md."""
