"""Preference data for Align-DA: candidate analyses from the unaligned prior, scored, paired, stored.

For each case (a background x_b with its truth x_t and the truth 48 h later):
1. draw N candidates (default 32) z ~ p(z | E(x_b)), one generator per candidate
   seeded from (seed, case time, n), with `guidance`:
   - "obs_free": the unguided prior (the data made before guidance existed);
   - "dps": as the deployed analysis draws them, DPS with the cycle's used
     observations (`Case.obs`), built by `LatentDiffusion` from a
     `LatentDiffusionConfig` with this module's strength, gamma, clip, jacobian
     and min_obs_error (defaults: the analysis'). With no observations DPS is
     the prior itself, so the candidates equal the unguided ones bit for bit;
2. decode and score them (`align.rewards.score_samples`): accuracy, forecast
   skill (48-h forecasts of the neural model started from each candidate),
   Geo-Score (physics) and Hydro-Score (recorded, not used for selection).
   Geo-Score's reference D is `geo_reference`: "climatology" (the nature run's
   train-split mean imbalance, `align.climatology`, passed in once as
   `d_reference`: truth-free at the physics level) or "truth" (the truth's D at
   the case's time, as the data made before this option);
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
`lead_hours`; no observations) or from archives of past cycles (`archive_cases`:
the archived backgrounds and used observations of the cycles in the experiment's
train split, on the trajectory each archive cycled, whose forecast-reward truth
also lies in the train split), so a running system can keep aligning itself on
its own backgrounds.

A build is resumable: with a journal (`journal_for`: PAIRS.cases beside the store) each scored case is kept
as it finishes, and a rerun of the same build (same models, source, settings and cases) scores only the
cases the cut-off one had not finished; the journal goes once the store is written.
Stored as a Zarr group (written to a temporary directory, then renamed):
arrays z_winner, z_loser, z_background (P, Cz, h, w), rewards_winner,
rewards_loser (P, 4: accuracy, forecast, geo, hydro), case_time (P,); attrs:
hash (sha256 of arrays and settings), prior, autoencoder, forecast_model,
settings (guidance and geo_reference among them), geo_reference_imbalance (D_ref,
None for "truth"), counts. The defaults of `PreferenceSettings` are the settings
of the data made before guidance and geo_reference existed: a store without those
keys reads as such, and they leave the hash unchanged at those values (old stores
still verify; `align-da align` defaults to the deployed form, see align/commands.py).
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
from align_da_ops.analysis.latent_diffusion import LatentDiffusion, LatentDiffusionConfig
from align_da_ops.diffusion.samplers import Sampler
from align_da_ops.errors import InputDataError
from align_da_ops.logs import get_logger
from align_da_ops.obs.batch import ObsBatch

REWARDS = ("accuracy", "forecast", "geo", "hydro")
GUIDANCE = ("obs_free", "dps")
GEO_REFERENCES = ("truth", "climatology")
log = get_logger(__name__)
_DPS_FIELDS = ("strength", "gamma", "clip", "jacobian", "min_obs_error")


def _analysis_default(name: str):
    return LatentDiffusionConfig.model_fields[name].default


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
    guidance: str = "obs_free"  # obs_free | dps
    strength: float = _analysis_default("strength")  # DPS options: as the analysis (analysis/latent_diffusion.py)
    gamma: float = _analysis_default("gamma")
    clip: float = _analysis_default("clip")
    jacobian: str = _analysis_default("jacobian")
    min_obs_error: float = _analysis_default("min_obs_error")
    geo_reference: str = "truth"  # truth | climatology

    def __post_init__(self):
        if self.guidance not in GUIDANCE:
            raise ValueError(f"guidance must be one of {GUIDANCE}; got {self.guidance!r}")
        if self.geo_reference not in GEO_REFERENCES:
            raise ValueError(f"geo_reference must be one of {GEO_REFERENCES}; got {self.geo_reference!r}")
        if self.variant not in ("m", "p"):
            raise ValueError(f"variant must be 'm' (multi-reward) or 'p' (physics); got {self.variant!r}")
        if self.samples < 4 or (self.variant == "p" and self.top_k * 2 > self.samples):
            raise ValueError(f"need samples >= 4 (and 2*top_k <= samples for -P); got {self.samples}, {self.top_k}")
        if self.guidance == "dps":
            self.analysis_config()  # validates the DPS options

    def analysis_config(self) -> LatentDiffusionConfig:
        """The DPS analysis the candidates are drawn with (sampler: `steps` deterministic DDIM steps)."""
        return LatentDiffusionConfig(guidance="dps", steps=self.steps, members=self.samples,
                                     **{k: getattr(self, k) for k in _DPS_FIELDS})


@dataclasses.dataclass(frozen=True)
class Case:
    time: np.datetime64
    background: torch.Tensor  # (C, lat, lon) physical
    truth: torch.Tensor
    truth_later: torch.Tensor  # truth forecast_hours later
    obs: ObsBatch | None = None  # the cycle's used observations (archive cases); None: none known


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


def draw(case: Case, autoencoder, prior, settings: PreferenceSettings, generators, interpolator=None):
    """(residual latents, z_b (1, Cz, h, w), members (N, C, lat, lon)) of one case under `settings.guidance`;
    DPS needs `case.obs` and the `interpolator` (a GridInterpolator) that makes their operator H."""
    if settings.guidance == "obs_free":
        return prior.sample(autoencoder, case.background, Sampler(settings.steps), generators)
    if case.obs is None or interpolator is None:
        raise InputDataError(f"case {case.time}: DPS candidates need the cycle's observations (cases from archives)")
    method = LatentDiffusion(settings.analysis_config(), autoencoder, prior, autoencoder.normalization.std)
    term = method.observation_term(case.obs, interpolator.prepare(case.obs, autoencoder.device))
    return prior.sample(autoencoder, case.background, method.sampler, generators, method.guidance, term)


def candidates(case: Case, autoencoder, prior, forecast_model, settings: PreferenceSettings, interpolator=None):
    """(residual latents (N, Cz, h, w), z_b (Cz, h, w), members, their 48-h forecasts) for one case."""
    stamp = int(case.time.astype("datetime64[h]").astype(np.int64))
    gens = [torch.Generator().manual_seed(settings.seed * 1_000_003 + stamp * 1009 + m) for m in range(settings.samples)]
    z, z_b, x = draw(case, autoencoder, prior, settings, gens, interpolator)
    with torch.no_grad():
        later = x
        for _ in range(settings.forecast_hours // 6):
            later = forecast_model.step(later)
    return z.detach().cpu(), z_b[0].cpu(), x.cpu(), later.cpu()


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


def _check_reference(settings: PreferenceSettings, d_reference) -> None:
    if (settings.geo_reference == "climatology") != (d_reference is not None):
        raise ValueError(f"geo_reference {settings.geo_reference!r} with d_reference={d_reference}: the climatological "
                         "reference needs its D_ref (align.climatology), the truth reference none")


def score_case(case: Case, autoencoder, prior, forecast_model, layout, latitudes, longitudes,
               settings: PreferenceSettings, d_reference: float | None = None) -> ScoredCase:
    """Draw, score and select one case's candidates (pure: a function of the case and the seeds).

    `d_reference`: Geo-Score's D_ref with `geo_reference` "climatology"; None with "truth"."""
    _check_reference(settings, d_reference)
    interpolator = None
    if settings.guidance == "dps":
        from align_da_ops.obs.operators import GridInterpolator

        interpolator = GridInterpolator(layout, latitudes, longitudes)
    z, z_b, x, later = candidates(case, autoencoder, prior, forecast_model, settings, interpolator)
    rewards = score_samples(x, case.truth, layout, latitudes, longitudes, forecasts=later, truth_forecast=case.truth_later,
                            geo_reference=d_reference)
    winners, losers, q = select(rewards, settings)
    return ScoredCase(case.time, z, z_b, torch.stack([rewards[k].float() for k in REWARDS], dim=1), winners, losers, q)


def _seconds(time: np.datetime64) -> int:
    return int(time.astype("datetime64[s]").astype(np.int64))


def _journal_item(scored: ScoredCase) -> dict:
    return {"time": _seconds(scored.time), "z": scored.z, "z_background": scored.z_background,
            "rewards": scored.rewards, "winners": list(scored.winners), "losers": list(scored.losers),
            "quantile": float(scored.quantile)}


def _from_journal(item: dict) -> ScoredCase:
    return ScoredCase(np.datetime64(item["time"], "s"), item["z"], item["z_background"], item["rewards"],
                      list(item["winners"]), list(item["losers"]), float(item["quantile"]))


def build(
    cases: Iterable[Case], autoencoder, prior, forecast_model, layout, latitudes, longitudes,
    settings: PreferenceSettings, on_case=None, client=None, d_reference: float | None = None, journal=None,
) -> dict:
    """Score candidates for every case and collect de-duplicated pairs (tensors, counts, geo_reference_imbalance).

    Cases are scored in this process one after another, or with a `distributed.Client` one task per
    case (the models broadcast to the workers once); pairing and de-duplication then run here in case
    order, so the pairs are the same either way. `on_case(cases done, pairs so far)`. `d_reference`:
    Geo-Score's climatological D_ref (`align.climatology`), required by and only by geo_reference
    "climatology". `journal` (an `align.journal.CaseJournal` whose identity covers the cases, models and
    settings): each scored case is kept there as it finishes and cases kept by an earlier, cut-off build
    are read back instead of scored again (scoring is pure, so the pairs equal an uninterrupted build's)."""
    _check_reference(settings, d_reference)
    cases = list(cases)
    kept: dict[int, ScoredCase] = {}
    for i in journal.done() if journal is not None else ():
        item = journal.load(i) if i < len(cases) else None
        if item is not None and item["time"] == _seconds(cases[i].time):
            kept[i] = _from_journal(item)
    if kept:
        log.info("preference_build_resumed", cases_kept=len(kept), cases_left=len(cases) - len(kept))
    todo = [i for i in range(len(cases)) if i not in kept]

    def keep(i: int, scored: ScoredCase) -> None:
        if journal is not None:
            journal.save(i, _journal_item(scored))

    if client is None:
        def score_all():
            for i, case in enumerate(cases):
                if i not in kept:
                    kept[i] = score_case(case, autoencoder, prior, forecast_model, layout, latitudes, longitudes,
                                         settings, d_reference)
                    keep(i, kept[i])
                yield kept.pop(i)

        scored = score_all()
    else:
        from align_da_ops.cluster import run_tasks

        models = [client.scatter(m, broadcast=True, hash=False) for m in (autoencoder, prior, forecast_model)]
        results = run_tasks(client, score_case, [cases[i] for i in todo], *models, layout, latitudes, longitudes,
                            settings, d_reference, keys=[f"preference-case-{i}" for i in todo],
                            on_result=lambda j, s: keep(todo[j], s),
                            on_done=(lambda j, done, n: on_case(len(kept) + done, 0)) if on_case else None)
        kept.update(zip(todo, results))
        scored = [kept[i] for i in range(len(cases))]
        on_case = None
    return {**pair_cases(scored, settings, on_case), "geo_reference_imbalance": d_reference}


def journal_for(pairs_path: Path, provenance: dict, settings: PreferenceSettings, d_reference, cases):
    """The case journal of a build of `pairs_path` (beside it, PAIRS.cases), identified by the models and
    source (`provenance`), the settings, D_ref and the case times: a rerun of the same build resumes from it."""
    from align_da_ops.align.journal import CaseJournal

    return CaseJournal(Path(pairs_path).with_name(Path(pairs_path).name + ".cases"), {
        **provenance, "settings": dataclasses.asdict(settings), "d_reference": d_reference,
        "cases": [str(c.time) for c in cases]})


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


def cases_from_archive(archive, states, layout, settings: PreferenceSettings, cycles=None) -> Iterator[Case]:
    """Backgrounds archived by past cycles (`cycles`, default every done cycle), truths from `states`; with
    DPS guidance also the observations each cycle used (those that passed its QC)."""
    from align_da_ops import grid

    later = np.timedelta64(settings.forecast_hours, "h")
    available = set(states[grid.TIME].values.tolist())
    for cycle in archive.done_cycles() if cycles is None else cycles:
        t = cycle.as_numpy().astype("datetime64[ns]")
        if t.tolist() not in available or (t + later).tolist() not in available:
            continue
        obs = None
        if settings.guidance == "dps":
            batch = archive.read_obs(cycle)[0]
            obs = batch.select(batch.passed)
        yield Case(t, archive.read_state("background", cycle),
                   layout.to_tensor(states.sel({grid.TIME: t}).load())[0],
                   layout.to_tensor(states.sel({grid.TIME: t + later}).load())[0], obs)


def archive_train_cycles(archive, cfg, settings: PreferenceSettings) -> list:
    """The archive's done cycles of the train split (`diffusion.cycled_pairs.split_cycles`: train period, train
    trajectory) whose forecast-reward truth, `forecast_hours` later, lies in the train period too."""
    from datetime import timedelta

    from align_da_ops.diffusion.cycled_pairs import split_cycles

    end = cfg.splits.train.end - timedelta(hours=settings.forecast_hours)
    return [c for c in split_cycles(archive, cfg, "train") if c.value <= end]


def archive_cases(cfg, archives, settings: PreferenceSettings) -> Iterator[Case]:
    """Cases from each archive's train cycles (`archive_train_cycles`), archive by archive, with the truth of
    the trajectory that archive cycled; archives of another experiment, layout or grid are refused."""
    from align_da_ops.archive import Archive
    from align_da_ops.data.sources import layout_of, open_states
    from align_da_ops.diffusion.cycled_pairs import archive_member, check_archive

    layout = layout_of(cfg)
    for path in archives:
        archive = Archive.open(path)
        check_archive(archive, cfg)
        cycles = archive_train_cycles(archive, cfg, settings)
        if cycles:
            yield from cases_from_archive(archive, open_states(cfg, archive_member(archive)), layout, settings, cycles)


def _hashed_settings(settings: PreferenceSettings) -> dict:
    """The settings as hashed: guidance and geo_reference (and DPS' options) drop out at their defaults, so data
    made before those options existed keep their hash."""
    out = dataclasses.asdict(settings)
    if settings.guidance == "obs_free":
        for key in ("guidance", *_DPS_FIELDS):
            del out[key]
    if settings.geo_reference == "truth":
        del out["geo_reference"]
    return out


def data_hash(tensors: dict, settings: PreferenceSettings) -> str:
    h = hashlib.sha256(json.dumps(_hashed_settings(settings), sort_keys=True).encode())
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
    group.attrs.update({"hash": digest, "settings": dataclasses.asdict(settings), "counts": built["counts"],
                        "geo_reference_imbalance": built.get("geo_reference_imbalance"), **provenance})
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return digest


def read_pairs(path: Path) -> dict:
    """The pairs as tensors plus attrs (hash, prior, autoencoder, ...); verifies the hash. `settings` comes back
    complete (keys a store predates at their defaults) and `geo_reference_imbalance` None where absent."""
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
    return {**tensors, "geo_reference_imbalance": None, **attrs, "settings": dataclasses.asdict(settings)}
