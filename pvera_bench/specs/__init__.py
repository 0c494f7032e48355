"""The built-in adapters' declarations, one torch-free module each (``pvera_bench.registry``
imports every module here): options, help, whether they train, their PEFT form or why none.
Their layers and ``apply`` functions live in ``pvera_bench/adapters/<name>.py``."""
