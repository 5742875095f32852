"""Evolution of plasticity rules (docs/paper.md 6.6): the paper's allele model, a GA and an ES on one
ask / evaluate / tell interface, evaluated through the core engine's batched networks, in
process or on Ray actors, and compared with meta-learning GD on identical footing.

Modules: ``config`` (configs, presets), ``genetics`` (allele model), ``strategies`` (GA, ES,
registry), ``evaluate`` (a population's losses), ``theory`` (predicted trajectories),
``driver`` (the loop, checkpoints), ``ray_pool`` (the only module importing ray), ``command``
(the ``evolve``, ``compare`` and ``evolve-theory`` commands).
"""
