"""Tuning a zipped model through gradients from ONNX Runtime: with labels (:mod:`.labels`, ``--finetune``)
or from the original models, no labels (:mod:`.distill`, ``--distill``). :mod:`.train` owns the loop,
:mod:`.losses` the losses and their gradients."""
