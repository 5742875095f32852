"""The paper's allele model (docs/paper.md 6.6): natural selection of rule coefficients.

Each rule coefficient Y_j is a sum of genes; each gene i has two alleles, +eps and -eps, and
x_i is the frequency of +eps. With ``sharing="none"`` coefficient j owns ``genes`` genes
(Y_j = sum of its genes); with ``sharing="random"`` every coefficient is a random +-1 combination
of ``genes`` genes drawn from one pool shared by all coefficients (the paper's "shared genes").
In both cases Y = M g with a fixed map M [P, G] and g in {-eps, +eps}^G.

Fitness (the only maximised quantity in the platform, as the genetics needs it) is
f = 1 - theta * loss, the weak-selection regime; it is clamped at 0.

- ``GeneticFinite``: N haploid organisms per generation, each gene drawn Bernoulli(x_i) (free
  recombination: the population stays in linkage equilibrium), selection
  x_i' = sum_k f_k g_ki / sum_k f_k, then the next generation is drawn from x' (Wright-Fisher
  sampling of the gene pool).
- ``GeneticInfinite``: the deterministic infinite-population dynamics of the paper,
  x_i' = x_i (1 - theta L_i^+) / (1 - theta Lbar_i), with L_i^+- the loss at the mean phenotype
  conditioned on allele +-eps at gene i (Ybar + 2 eps (1 - x_i) M_i, Ybar - 2 eps x_i M_i) and
  Lbar_i = x_i L_i^+ + (1 - x_i) L_i^-.

The start: allele frequencies whose mean phenotype is the start rule r0 (the one GD starts from),
x = 1/2 + M^+ r0 / (2 eps), clipped to [X_MIN, 1 - X_MIN] (then the start is not exact: the
clipped coefficients are reported by ``start_error``).
"""

from __future__ import annotations

import numpy as np

from ..seeding import numpy_rng

X_MIN = 0.02  # initial frequencies are kept this far from fixation


def gene_map(n_coeffs: int, genes: int, sharing: str, seed: int) -> np.ndarray:
    """M [P, G]: Y = M g. 'none': block identity, G = P * genes; 'random': each row has
    ``genes`` entries +-1 at random positions of a pool of G = P * genes genes."""
    G = n_coeffs * genes
    M = np.zeros((n_coeffs, G))
    if sharing == "none":
        for j in range(n_coeffs):
            M[j, j * genes:(j + 1) * genes] = 1.0
        return M
    rng = numpy_rng(seed, "evolution", "gene-map")
    for j in range(n_coeffs):
        cols = rng.choice(G, size=genes, replace=False)
        M[j, cols] = rng.choice([-1.0, 1.0], size=genes)
    return M


def initial_frequencies(M: np.ndarray, eps: float, start: np.ndarray) -> np.ndarray:
    """x [G] with mean phenotype M eps (2x - 1) = start (least squares), clipped."""
    z = np.linalg.lstsq(M, start, rcond=None)[0]
    return np.clip(0.5 + z / (2 * eps), X_MIN, 1 - X_MIN)


class _Genetic:
    """What both genetic modes share: the map, the frequencies and their summaries."""

    def __init__(self, cfg, start: np.ndarray):
        self.cfg, self.eps, self.theta = cfg, cfg.eps, cfg.theta
        self.M = gene_map(start.shape[0], cfg.genes, cfg.sharing, cfg.seed)
        self.x = initial_frequencies(self.M, self.eps, start)
        self.start_error = float(np.abs(self.center() - start).max())

    def phenotype(self, alleles: np.ndarray) -> np.ndarray:
        """alleles [n, G] in {0, 1} (1 = +eps) -> coefficients [n, P]."""
        return (self.eps * (2.0 * alleles - 1.0)) @ self.M.T

    def center(self) -> np.ndarray:
        """The mean phenotype Ybar = M eps (2x - 1) [P]: the population's rule."""
        return self.M @ (self.eps * (2.0 * self.x - 1.0))

    def fitness(self, losses: np.ndarray) -> np.ndarray:
        """f = 1 - theta * loss, clamped at 0 (weak selection when theta * loss << 1)."""
        return np.clip(1.0 - self.theta * np.asarray(losses, dtype=np.float64), 0.0, None)

    def stats(self) -> dict[str, float]:
        x = self.x
        return {"allele_x_mean": float(x.mean()), "allele_x_min": float(x.min()),
                "allele_x_max": float(x.max()),
                "allele_fixed": float(np.mean((x <= 0.0) | (x >= 1.0))),
                "heterozygosity": float(np.mean(2 * x * (1 - x)))}

    def state_dict(self) -> dict:
        return {"x": self.x.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.x = np.asarray(state["x"], dtype=np.float64)


class GeneticFinite(_Genetic):
    """N haploid organisms per generation, Wright-Fisher sampling of the gene pool."""

    name = "genetic"

    def __init__(self, cfg, start: np.ndarray):
        super().__init__(cfg, start)
        self._alleles: tuple[int, np.ndarray] | None = None

    def _draw(self, generation: int) -> np.ndarray:
        rng = numpy_rng(self.cfg.seed, "evolution", generation, "genotypes")
        return (rng.random((self.cfg.population, self.x.shape[0])) < self.x).astype(np.float64)

    def ask(self, generation: int) -> np.ndarray:
        """The generation's N organisms' rules [N, P], drawn from (seed, generation)."""
        alleles = self._draw(generation)
        self._alleles = (generation, alleles)
        return self.phenotype(alleles)

    def tell(self, generation: int, members: np.ndarray, losses: np.ndarray) -> None:
        """Selection: x' = fitness-weighted allele frequencies of this generation."""
        g, alleles = self._alleles if self._alleles is not None else (None, None)
        if g != generation:
            alleles = self._draw(generation)
        f = self.fitness(losses)
        w = f / f.sum() if f.sum() > 0 else np.full_like(f, 1.0 / f.shape[0])
        self.x = w @ alleles


class GeneticInfinite(_Genetic):
    """The deterministic infinite-population allele dynamics (the paper's model as printed,
    with the sign and the factor x_i restored: docs/paper.md 6.6 'Caution')."""

    name = "genetic-infinite"

    def _conditional(self) -> np.ndarray:
        """Mean phenotypes given +eps (rows 0..G-1) and -eps (rows G..2G-1) at each gene."""
        Y, e, x = self.center(), self.eps, self.x
        plus = Y[None] + (2 * e * (1 - x))[:, None] * self.M.T
        minus = Y[None] - (2 * e * x)[:, None] * self.M.T
        return np.concatenate([plus, minus])

    def ask(self, generation: int) -> np.ndarray:
        """The distinct conditional mean phenotypes [u, P] (genes at equal frequency with equal
        map columns share them)."""
        return np.unique(self._conditional(), axis=0)

    def tell(self, generation: int, members: np.ndarray, losses: np.ndarray) -> None:
        cond = self._conditional()
        members_now, inverse = np.unique(cond, axis=0, return_inverse=True)
        if members_now.shape != members.shape or not np.array_equal(members_now, members):
            raise ValueError("tell() got members that ask() did not give for this state")
        L = np.asarray(losses, dtype=np.float64)[inverse.reshape(-1)]
        G = self.x.shape[0]
        f_plus, f_minus = self.fitness(L[:G]), self.fitness(L[G:])
        mean_f = self.x * f_plus + (1 - self.x) * f_minus
        safe = np.where(mean_f > 0, mean_f, 1.0)
        self.x = np.where(mean_f > 0, self.x * f_plus / safe, self.x)
