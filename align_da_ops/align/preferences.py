"""Preference data for Align-DA: candidate analyses from the unaligned prior, scored, paired, stored.

For each case (a background x_b with its truth x_t and the truth 48 h later):
1. draw N candidates (default 32) z ~ p(z | E(x_b)) with the unguided (ObsFree)
   sampler, one generator per candidate seeded from (seed, case time, n);
2. decode and score them (`align.rewards.score_samples`): accuracy, forecast
   skill (48-h forecasts of the neural model started from each candidate),
   Geo-Score (physics) and Hydro-Score (recorded, not used for selection);
3. choose winners and losers:
   - variant "p" (physics): the top / bottom `top_k` (5) by Geo-Score;
   - variant "m" (multi-reward): candidates in the top `quantile` (decile) on
     all three of accuracy, forecast and Geo-Score win, those in the bottom
     decile on all three lose. An intersection of three deciles of 32 is often
     empty, so the quantile is widened in steps of 0.05 (up to 0.5) until each
     side holds at least `min_side` candidates; the quantile used is recorded.
     If even the top/bottom halves share no `min_side` candidates, the case falls
     back to the mean rank over the three rewards (its top/bottom `quantile`,
     at least `min_side`), counted as `composite_fallback`;
4. stratified random pairing: winners and losers are shuffled and paired
   round-robin, so each appears once or twice and none dominates; pairs are
   de-duplicated by a hash of their latents.
Cases come from the nature run (backgrounds: the neural model's forecasts at
`lead_hours`) or from an archive of past cycles (its archived backgrounds), so a
running system can keep aligning itself on its own backgrounds.

Stored as a Zarr group (written to a temporary directory, then renamed):
arrays z_winner, z_loser, z_background (P, Cz, h, w), rewards_winner,
rewards_loser (P, 4: accuracy, forecast, geo, hydro), case_time (P,); attrs:
hash (sha256 of arrays and settings), prior, autoencoder, forecast_model,
settings, counts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from align_da_ops.align.rewards import score_samples
from align_da_ops.diffusion.samplers import Sampler
from align_da_ops.errors import InputDataError

REWARDS = ("accuracy", "forecast", "geo", "hydro")


@dataclasses.dataclass(frozen=True)
class PreferenceSettings:
    variant: str = "m"  # m | p
    samples: int = 32
    steps: int = 16
    lead_hours: int = 24
    forecast_hours: int = 48
    every_hours: int = 6
    top_k: int = 5
    quantile: float = 0.1
    min_side: int = 2
    seed: int = 0

    def __post_init__(self):
        if self.variant not in ("m", "p"):
            raise ValueError(f"variant must be 'm' (multi-reward) or 'p' (physics); got {self.variant!r}")
        if self.samples < 4 or (self.variant == "p" and self.top_k * 2 > self.samples):
            raise ValueError(f"need samples >= 4 (and 2*top_k <= samples for -P); got {self.samples}, {self.top_k}")


@dataclasses.dataclass(frozen=True)
class Case:
    time: np.datetime64
    background: torch.Tensor  # (C, lat, lon) physical
    truth: torch.Tensor
    truth_later: torch.Tensor  # truth forecast_hours later


def select(rewards: dict[str, torch.Tensor], settings: PreferenceSettings) -> tuple[list[int], list[int], float]:
    """(winners, losers, quantile used) among N candidates by the variant's rule."""
    n = len(rewards["geo"])
    if settings.variant == "p":
        order = torch.argsort(rewards["geo"], descending=True, stable=True).tolist()
        return order[: settings.top_k], order[-settings.top_k :], settings.top_k / n
    keys = ("accuracy", "forecast", "geo")
    ranks = torch.stack([torch.argsort(torch.argsort(rewards[k], stable=True), stable=True) for k in keys])  # 0 = worst
    q = settings.quantile
    while q <= 0.5 + 1e-9:
        k = max(1, int(round(q * n)))
        winners = torch.nonzero((ranks >= n - k).all(0)).flatten().tolist()
        losers = torch.nonzero((ranks < k).all(0)).flatten().tolist()
        if len(winners) >= settings.min_side and len(losers) >= settings.min_side:
            return winners, losers, q
        q += 0.05
    composite = ranks.float().mean(0)
    k = max(settings.min_side, int(round(settings.quantile * n)))
    order = torch.argsort(composite, descending=True, stable=True).tolist()
    return order[:k], order[-k:], float("nan")


def pair_up(winners: list[int], losers: list[int], rng: np.random.Generator) -> list[tuple[int, int]]:
    """Stratified random pairing: shuffle both sides, pair round-robin over the longer one."""
    if not winners or not losers:
        return []
    w, l = rng.permutation(winners).tolist(), rng.permutation(losers).tolist()
    return [(w[i % len(w)], l[i % len(l)]) for i in range(max(len(w), len(l)))]


def candidates(case: Case, autoencoder, prior, forecast_model, settings: PreferenceSettings):
    """(residual latents (N, Cz, h, w), z_b (Cz, h, w), members, their 48-h forecasts) for one case."""
    stamp = int(case.time.astype("datetime64[h]").astype(np.int64))
    gens = [torch.Generator().manual_seed(settings.seed * 1_000_003 + stamp * 1009 + m) for m in range(settings.samples)]
    z, z_b, x = prior.sample(autoencoder, case.background, Sampler(settings.steps), gens)
    with torch.no_grad():
        later = x
        for _ in range(settings.forecast_hours // 6):
            later = forecast_model.step(later)
    return z.cpu(), z_b[0].cpu(), x.cpu(), later.cpu()


@dataclasses.dataclass(frozen=True)
class ScoredCase:
    """One case's candidates, rewards and selection (what pairing needs; independent of other cases)."""

    time: np.datetime64
    z: torch.Tensor  # (N, Cz, h, w) residual latents
    z_background: torch.Tensor  # (Cz, h, w)
    rewards: torch.Tensor  # (N, 4) in REWARDS order
    winners: list[int]
    losers: list[int]
    quantile: float


def score_case(case: Case, autoencoder, prior, forecast_model, layout, latitudes, longitudes,
               settings: PreferenceSettings) -> ScoredCase:
    """Draw, score and select one case's candidates (pure: a function of the case and the seeds)."""
    z, z_b, x, later = candidates(case, autoencoder, prior, forecast_model, settings)
    rewards = score_samples(x, case.truth, layout, latitudes, longitudes, forecasts=later, truth_forecast=case.truth_later)
    winners, losers, q = select(rewards, settings)
    return ScoredCase(case.time, z, z_b, torch.stack([rewards[k].float() for k in REWARDS], dim=1), winners, losers, q)


def build(
    cases: Iterable[Case], autoencoder, prior, forecast_model, layout, latitudes, longitudes,
    settings: PreferenceSettings, on_case=None, client=None,
) -> dict:
    """Score candidates for every case and collect de-duplicated pairs (tensors + counts).

    Cases are scored in this process one after another, or with a `distributed.Client` one task per
    case (the models broadcast to the workers once); pairing and de-duplication then run here in case
    order, so the pairs are the same either way. `on_case(cases done, pairs so far)`."""
    if client is None:
        scored = (score_case(c, autoencoder, prior, forecast_model, layout, latitudes, longitudes, settings) for c in cases)
    else:
        from align_da_ops.cluster import run_tasks

        models = [client.scatter(m, broadcast=True, hash=False) for m in (autoencoder, prior, forecast_model)]
        cases = list(cases)
        scored = run_tasks(client, score_case, cases, *models, layout, latitudes, longitudes, settings,
                           keys=[f"preference-case-{i}" for i in range(len(cases))],
                           on_done=(lambda i, done, n: on_case(done, 0)) if on_case else None)
        on_case = None
    return pair_cases(scored, settings, on_case)


def pair_cases(scored: Iterable[ScoredCase], settings: PreferenceSettings, on_case=None) -> dict:
    """Pair winners with losers case by case (one seeded generator across cases), drop duplicate pairs."""
    rng = np.random.default_rng(settings.seed)
    out = {k: [] for k in ("z_winner", "z_loser", "z_background", "rewards_winner", "rewards_loser", "case_time")}
    seen: set[str] = set()
    counts = {"cases": 0, "cases_without_pairs": 0, "composite_fallback": 0, "duplicates": 0, "quantiles": []}
    for case in scored:
        z, q = case.z, case.quantile
        counts["cases"] += 1
        if not case.winners:
            counts["cases_without_pairs"] += 1
        if q != q:
            counts["composite_fallback"] += 1
        counts["quantiles"].append(q)
        for w, l in pair_up(case.winners, case.losers, rng):
            key = hashlib.sha256(z[w].numpy().tobytes() + z[l].numpy().tobytes()).hexdigest()
            if key in seen:
                counts["duplicates"] += 1
                continue
            seen.add(key)
            out["z_winner"].append(z[w])
            out["z_loser"].append(z[l])
            out["z_background"].append(case.z_background)
            out["rewards_winner"].append(case.rewards[w])
            out["rewards_loser"].append(case.rewards[l])
            out["case_time"].append(case.time.astype("datetime64[s]").astype(np.int64))
        if on_case:
            on_case(counts["cases"], len(out["z_winner"]))
    if not out["z_winner"]:
        raise InputDataError(f"no preference pairs from {counts['cases']} cases; give more cases or samples")
    pairs = {k: torch.stack(v) if k != "case_time" else torch.as_tensor(v) for k, v in out.items()}
    finite = [v for v in counts["quantiles"] if v == v]
    counts = {**{k: v for k, v in counts.items() if k != "quantiles"}, "pairs": len(out["z_winner"]),
              "mean_quantile": float(np.mean(finite)) if finite else float("nan")}
    return {"tensors": pairs, "counts": counts}


def cases_from_states(states, layout, forecast_model, start, end, settings: PreferenceSettings) -> Iterator[Case]:
    """Backgrounds = the forecast model's `lead_hours` forecasts of the truth, every `every_hours` in [start, end]."""
    from align_da_ops import grid

    times = states[grid.TIME].sel({grid.TIME: slice(start, end)}).values
    lead, later = np.timedelta64(settings.lead_hours, "h"), np.timedelta64(settings.forecast_hours, "h")
    available = set(states[grid.TIME].values.tolist())
    for t in times[:: max(1, settings.every_hours // 6)]:
        if (t - lead).tolist() not in available or (t + later).tolist() not in available:
            continue
        start_state = layout.to_tensor(states.sel({grid.TIME: t - lead}).load())[0]
        x_b = start_state
        with torch.no_grad():
            for _ in range(settings.lead_hours // 6):
                x_b = forecast_model.step(x_b)
        yield Case(t, x_b, layout.to_tensor(states.sel({grid.TIME: t}).load())[0],
                   layout.to_tensor(states.sel({grid.TIME: t + later}).load())[0])


def cases_from_archive(archive, states, layout, settings: PreferenceSettings) -> Iterator[Case]:
    """Backgrounds archived by past cycles (every done cycle), truths from `states`."""
    from align_da_ops import grid

    later = np.timedelta64(settings.forecast_hours, "h")
    available = set(states[grid.TIME].values.tolist())
    for cycle in archive.done_cycles():
        t = cycle.as_numpy().astype("datetime64[ns]")
        if t.tolist() not in available or (t + later).tolist() not in available:
            continue
        yield Case(t, archive.read_state("background", cycle),
                   layout.to_tensor(states.sel({grid.TIME: t}).load())[0],
                   layout.to_tensor(states.sel({grid.TIME: t + later}).load())[0])


def data_hash(tensors: dict, settings: PreferenceSettings) -> str:
    h = hashlib.sha256(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode())
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def write_pairs(path: Path, built: dict, settings: PreferenceSettings, provenance: dict) -> str:
    """Atomically write the pairs as a Zarr group; returns their hash."""
    import zarr

    path = Path(path)
    tensors = built["tensors"]
    digest = data_hash(tensors, settings)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    group = zarr.open_group(str(tmp), mode="w")
    for key, value in tensors.items():
        group.create_array(key, data=value.numpy())
    group.attrs.update({"hash": digest, "settings": dataclasses.asdict(settings), "counts": built["counts"], **provenance})
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return digest


def read_pairs(path: Path) -> dict:
    """The pairs as tensors plus attrs (hash, prior, autoencoder, ...); verifies the hash."""
    import zarr

    path = Path(path)
    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
        tensors = {k: torch.as_tensor(np.asarray(group[k][...])) for k in
                   ("z_winner", "z_loser", "z_background", "rewards_winner", "rewards_loser", "case_time")}
    except Exception as exc:  # missing/corrupt store
        raise InputDataError(f"{path} is not readable preference data: {type(exc).__name__}: {exc}") from None
    settings = PreferenceSettings(**attrs["settings"])
    if data_hash(tensors, settings) != attrs.get("hash"):
        raise InputDataError(f"{path} is corrupt: its arrays do not match the recorded hash {attrs.get('hash')}")
    return {**tensors, **attrs}
