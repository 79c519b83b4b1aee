"""Simulating one gene: sequence, exon / intron structure, decoys and the base model's score tracks.

The biology behind :func:`metadask.dataset.synthetic.make_dataset` (see that module's docs for
what the simulated genes look like); :mod:`~metadask.dataset.synthetic` turns a simulated
:class:`_Gene` into the upstream columns and writes the files. Everything is a function of
``(seed, gene index)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_GENE_LENGTH = 3000
"""Mean full-body gene length (nt); each gene draws 0.7-1.3x this, one intron per ~600 nt."""

_FLANK = 60  # simulated flank on each side of the gene (>= the 50 nt half window + 3)
_A, _C, _G, _T, _N = range(5)  # base codes of the simulated sequence ("ACGTN")


@dataclass
class _Gene:
    """One simulated gene: sequence (codes 0..4 with flanks), score tracks and rows."""

    index: int
    chrom: str
    strand: str
    gene_start: int
    length: int
    exon_lengths: np.ndarray
    num_overlaps: int
    seq: np.ndarray  # int8, length + 2 * _FLANK, gene strand
    donor: np.ndarray  # float64 track aligned with seq
    acceptor: np.ndarray
    positions: np.ndarray  # int64 row positions (0-based, sorted)
    labels: np.ndarray  # int8 0/1/2 per row
    noise: np.ndarray  # float64 (n_rows, 3) uniforms: QC flag, two leak flips

    @property
    def gene_id(self) -> str:
        return f"SYN{self.index + 1:06d}"


def _pick(rng: np.random.Generator, allowed: Sequence[int], n: int) -> np.ndarray:
    return np.asarray(allowed, dtype=np.int8)[rng.integers(len(allowed), size=n)]


def _write_decoys(seq: np.ndarray, pos: np.ndarray, kind: np.ndarray, repeat: np.ndarray,
                  rng: np.random.Generator) -> None:
    """GT (donor-like) or AG (acceptor-like) decoys, most inside microsatellites."""
    for p, t, rep, n_rep in zip(pos, kind, repeat, rng.integers(6, 15, size=len(pos))):
        if t == 1 and rep:
            seq[p + 1:p + 1 + 2 * n_rep] = np.tile(np.int8([_G, _T]), n_rep)
        elif t == 1:
            seq[p + 1:p + 3] = (_G, _T)
            seq[p + 3] = _pick(rng, (_C, _T), 1)[0]  # not R: non-canonical
            seq[p - 1] = _pick(rng, (_C, _T), 1)[0]
        elif rep:
            seq[p - 2 * n_rep:p] = np.tile(np.int8([_A, _G]), n_rep)
        else:
            seq[p - 16:p - 2] = _pick(rng, (_A, _G), 14)  # purine-rich: no PPT
            seq[p - 2:p] = (_A, _G)


def _write_sites(seq: np.ndarray, donors: np.ndarray, acceptors: np.ndarray,
                 q_d: np.ndarray, q_a: np.ndarray, rng: np.random.Generator) -> None:
    """Donor ``MAG|GTRAGT`` and acceptor ``(Y)n..YAG|G`` motifs with strengths ``q``."""
    donor_motif = [(-2, (_A, _C)), (-1, (_A,)), (0, (_G,)), (3, (_A, _G)), (4, (_A,)),
                   (5, (_G,)), (6, (_T,))]
    for off, allowed in donor_motif:
        use = rng.random(len(donors)) < q_d
        seq[donors[use] + off] = _pick(rng, allowed, len(donors))[use]
    seq[donors + 1], seq[donors + 2] = _G, _T
    offs = np.arange(-22, -3)
    use = rng.random((len(acceptors), len(offs))) < (0.35 + 0.6 * q_a)[:, None]
    pyr = np.where(rng.random(use.shape) < 0.6, _T, _C).astype(np.int8)
    idx = acceptors[:, None] + offs
    seq[idx[use]] = pyr[use]
    use3 = rng.random(len(acceptors)) < q_a
    seq[acceptors[use3] - 3] = _pick(rng, (_C, _T), len(acceptors))[use3]
    seq[acceptors - 2], seq[acceptors - 1] = _A, _G
    use0 = rng.random(len(acceptors)) < 0.7 * q_a
    seq[acceptors[use0]] = _G


def _spread(breadth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Neighbour/peak ratios at offsets 1 and 2 from a breadth in [0, 1] (sharp -> broad)."""
    n = len(breadth)
    r1 = (0.005 + 0.8 * breadth) * rng.uniform(0.5, 1.0, n)
    r2 = r1 * (0.05 + 0.6 * breadth) * rng.uniform(0.5, 1.0, n)
    return np.stack([r1, r2], axis=1)


def _full_body_structure(rng: np.random.Generator,
                         gene_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Exon and intron lengths filling about ``gene_length`` nt (one intron per ~600 nt)."""
    target = max(400, round(gene_length * rng.uniform(0.7, 1.3)))
    n_introns = max(1, round(target / 600 * rng.uniform(0.7, 1.3)))
    exons = (70 + rng.gamma(2.0, 45.0, n_introns + 1)).astype(np.int64)
    room = max(0, target - int(exons.sum()) - 75 * n_introns)
    introns = (75 + np.floor(room * rng.dirichlet(np.full(n_introns, 2.0)))).astype(np.int64)
    return exons, introns


def _simulate_gene(seed: int, index: int, with_n: bool, gene_length: int | None = None) -> _Gene:
    """Gene ``index``: sampled rows, or with ``gene_length`` every position of a shorter gene."""
    rng = np.random.default_rng([seed, index])
    chrom = f"chr{int(rng.integers(1, 6))}"
    strand = "+" if rng.random() < 0.5 else "-"
    gene_start = int(rng.integers(10_000, 40_000_000))
    num_overlaps = int(rng.choice(3, p=[0.85, 0.12, 0.03]))
    if gene_length is None:
        n_rows = int(rng.integers(420, 1281))
        n_introns = max(3, round(0.05 * n_rows * rng.uniform(0.9, 1.1)))
        exons = (70 + rng.gamma(2.0, 45.0, n_introns + 1)).astype(np.int64)
        introns = np.minimum(75 + rng.lognormal(np.log(150), 0.7, n_introns), 3000).astype(np.int64)
    else:
        exons, introns = _full_body_structure(rng, gene_length)
        n_introns = len(introns)
    seg = np.empty(2 * n_introns + 1, np.int64)
    seg[0::2], seg[1::2] = exons, introns
    ends = np.cumsum(seg)
    length = int(ends[-1])
    exon_starts, exon_ends = ends[0::2] - exons, ends[0::2] - 1
    donors, acceptors = exon_ends[:-1], exon_starts[1:]
    sites = np.sort(np.concatenate([donors, acceptors]))

    # background sequence, exons slightly GC-richer
    gc = rng.uniform(0.35, 0.6)
    total = length + 2 * _FLANK
    in_exon = np.zeros(total, bool)
    for s, e in zip(exon_starts, exon_ends):
        in_exon[s + _FLANK:e + _FLANK + 1] = True
    is_gc = rng.random(total) < gc + 0.05 * in_exon
    half = rng.random(total) < 0.5
    seq = np.where(is_gc, np.where(half, _C, _G), np.where(half, _A, _T)).astype(np.int8)

    # decoys at neither positions, >= 35 nt from sites and >= 40 nt from each other
    n_sites = len(sites)
    cand = rng.integers(40, length - 40, size=max(1, n_sites))
    near = np.searchsorted(sites, cand)
    dist = np.minimum(np.abs(cand - sites[np.clip(near - 1, 0, n_sites - 1)]),
                      np.abs(cand - sites[np.clip(near, 0, n_sites - 1)]))
    want = int(rng.poisson(0.12 * n_sites))
    decoys: list[int] = []
    for c in cand[dist >= 35]:
        if len(decoys) >= want:
            break
        if all(abs(int(c) - d) >= 40 for d in decoys):
            decoys.append(int(c))
    dpos = np.sort(np.asarray(decoys, np.int64))
    nd = len(dpos)
    dkind = rng.integers(1, 3, size=nd)
    hidden = rng.random(nd) < 0.3  # unannotated sites: look like true ones
    drepeat = (rng.random(nd) < 0.55) & ~hidden
    dbroad = np.where(hidden, rng.beta(1.0, 6.0, nd), rng.beta(2.5, 1.5, nd))
    dfp = rng.random(nd) < 0.5
    dh = np.where(dfp, rng.uniform(0.5, 0.97, nd),
                  np.exp(rng.uniform(np.log(0.03), np.log(0.5), nd)))
    _write_decoys(seq, dpos[~hidden] + _FLANK, dkind[~hidden], drepeat[~hidden], rng)
    hd, ha = dpos[hidden & (dkind == 1)] + _FLANK, dpos[hidden & (dkind == 2)] + _FLANK
    _write_sites(seq, hd, ha, rng.uniform(0.4, 1.0, len(hd)), rng.uniform(0.4, 1.0, len(ha)), rng)

    # true sites: ~82 % detected (score >= 0.5); missed ones have strong motifs, mostly sharp peaks
    p_det = rng.uniform(0.76, 0.88)
    det_d, det_a = rng.random(len(donors)) < p_det, rng.random(len(acceptors)) < p_det
    nn = len(donors)
    q_d = np.where(det_d, rng.uniform(0.3, 1.0, nn), rng.uniform(0.6, 1.0, nn))
    q_a = np.where(det_a, rng.uniform(0.3, 1.0, nn), rng.uniform(0.6, 1.0, nn))
    _write_sites(seq, donors + _FLANK, acceptors + _FLANK, q_d, q_a, rng)

    if with_n:  # N runs 8-29 nt downstream of a few donors (inside the site rows' windows)
        nrng = np.random.default_rng([seed, index, 1])
        for d in nrng.choice(donors, size=min(nn, int(nrng.integers(1, 4))), replace=False):
            p = int(d) + _FLANK + int(nrng.integers(8, 29))
            seq[p:p + int(nrng.integers(1, 3))] = _N

    # base-model score tracks
    tracks = []
    for t in (1, 2):
        logit = -9.0 + 0.9 * rng.standard_normal(total)
        cand_t = np.zeros(total, bool)
        if t == 1:
            cand_t[:-2] = (seq[1:-1] == _G) & (seq[2:] == _T)
        else:
            cand_t[2:] = (seq[:-2] == _A) & (seq[1:-1] == _G)
        tracks.append(1.0 / (1.0 + np.exp(-(logit + 2.5 * cand_t))))
    det = np.concatenate([det_d, det_a])
    ns = len(det)
    deep = rng.random(ns) < 0.35  # missed without a trace (scores like a plain GT/AG)
    sh = np.where(det, 1.0 - 0.5 * rng.beta(1.0, 2.5, ns),
                  np.exp(np.where(deep, rng.uniform(np.log(0.002), np.log(0.03), ns),
                                  rng.uniform(np.log(0.03), np.log(0.45), ns))))
    sbroad = np.where(det | (rng.random(ns) < 0.7), rng.beta(1.0, 6.0, ns), rng.beta(2.5, 1.5, ns))
    ev_pos = np.concatenate([donors, acceptors, dpos]) + _FLANK
    ev_track = np.concatenate([np.ones(len(donors), int), np.full(len(acceptors), 2), dkind]) - 1
    ev_h = np.concatenate([sh, dh])
    r_site, r_dec = _spread(sbroad, rng), _spread(dbroad, rng)
    ratios = np.concatenate([r_site, r_dec])
    side = rng.uniform(0.7, 1.0, (len(ev_pos), 4))  # asymmetry between left and right
    cross = ev_h * rng.uniform(0.0, 0.03, len(ev_pos))
    for t in (0, 1):
        m = ev_track == t
        for j, off in enumerate((-2, -1, 1, 2)):
            spill = ev_h[m] * ratios[m, abs(off) - 1] * side[m, j]
            np.maximum.at(tracks[t], ev_pos[m] + off, spill)
        np.maximum.at(tracks[1 - t], ev_pos[m], cross[m])
    for t in (0, 1):
        m = ev_track == t
        tracks[t][ev_pos[m]] = ev_h[m]
    donor, acceptor = tracks
    s = donor + acceptor
    over = s > 0.9999
    donor[over] *= 0.9999 / s[over]
    acceptor[over] *= 0.9999 / s[over]

    labels = np.zeros(length, np.int8)
    labels[donors], labels[acceptors] = 1, 2
    if gene_length is not None:  # full body: every position is a row
        positions = np.arange(length, dtype=np.int64)
        return _Gene(index=index, chrom=chrom, strand=strand, gene_start=gene_start,
                     length=length, exon_lengths=exons, num_overlaps=num_overlaps, seq=seq,
                     donor=donor, acceptor=acceptor, positions=positions, labels=labels,
                     noise=rng.random((length, 3)))

    # rows: sites, decoys, every score >= 0.15, near positions (+-75 nt), some random ones
    chosen = np.zeros(length, bool)
    chosen[sites] = True
    chosen[dpos] = True
    chosen |= np.maximum(donor, acceptor)[_FLANK:_FLANK + length] >= 0.15
    n_fill = max(0, n_rows - int(chosen.sum()))
    n_random = round(0.12 * n_fill)
    anchors = np.concatenate([sites, dpos])
    pool = np.unique((anchors[:, None] + np.arange(-75, 76)).ravel())
    pool = pool[(pool >= 0) & (pool < length)]
    pool = pool[~chosen[pool]]
    chosen[rng.choice(pool, size=min(len(pool), n_fill - n_random), replace=False)] = True
    rest = np.flatnonzero(~chosen)
    chosen[rng.choice(rest, size=min(len(rest), max(0, n_rows - int(chosen.sum()))),
                      replace=False)] = True
    positions = np.flatnonzero(chosen).astype(np.int64)
    return _Gene(index=index, chrom=chrom, strand=strand, gene_start=gene_start, length=length,
                 exon_lengths=exons, num_overlaps=num_overlaps, seq=seq, donor=donor,
                 acceptor=acceptor, positions=positions, labels=labels[positions],
                 noise=rng.random((len(positions), 3)))
