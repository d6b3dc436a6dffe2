"""Analyses of data and of model families, beside training and evaluation:

  overlap   the paper's test-set contamination check (Radford et al. 2019, Section 4): a Bloom filter of a training
            corpus's 8-grams, and the share of each test set's 8-grams found in it (`gpt2 overlap`);
  scaling   a family of models trained on the same data and token budget, evaluated, and a power law fitted to
            loss against parameters (`gpt2 scale`).

Importing this package loads neither torch nor numpy; each module loads what it needs.
"""
