"""Adversarial robustness of trained (frozen) networks: attacks, worst-case evaluation, plots,
and the ``plasticity attack`` command (docs/paper.md 5.3-5.4)."""
