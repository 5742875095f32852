"""plasticity: learning with synaptic plasticity rules (Cristian, Dabagia, Papadimitriou, Vempala).

The core engine (network, rules, rule-based learning, meta-learning, baselines) imports only torch
and numpy; Ray and MLflow live at the edges (see DESIGN.md).
"""

__version__ = "0.1.0"


class PlasticityError(Exception):
    """A user-facing error: bad input, a missing file, an impossible config.

    The CLI prints its message as one line and exits with code 2.
    """
