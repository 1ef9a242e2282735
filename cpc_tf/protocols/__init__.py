"""The protocols: pretraining (`pretrain`), the linear probe (`linear`),
fine-tuning (`finetune`) and the supervised baseline (`supervised`), each a
config and a `run`, found by name in `registry` (the entry points and the
report use it); `runtime` is what every entry point does around its
work."""
