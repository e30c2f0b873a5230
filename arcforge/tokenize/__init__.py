"""Tokenizer training, Megatron shards, packing and training mixtures (issue 3).

* :mod:`arcforge.tokenize.spm`: the ``Tokenizer`` class; :mod:`arcforge.tokenize.spm_train`: the
  ``tokenize.train_spm`` stage
  (sentencepiece BPE, exact round trip, special tokens at fixed ids);
* :mod:`arcforge.tokenize.shards`: ``tokenize.megatron_shards`` (``.bin``/``.idx`` per source
  and bucket per partition, written by megatron-core);
* :mod:`arcforge.tokenize.packing`: best-fit decreasing packing for mid-training;
* :mod:`arcforge.tokenize.mixture`: budgets, weights and epochs to Megatron blends
  (``arcforge mix``).

Nothing is imported here, so naming a stage in a config does not load sentencepiece or
megatron-core. See docs/tokenize.md.
"""
