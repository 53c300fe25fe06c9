"""`fisherkit demo --quick` as a person runs it: every section ran, its numbers are finite and sane
(checked against closed forms computed here), every plot is a valid PNG, the page is self-contained."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy import stats as sps

from fisherkit.report.figures import is_png
from fisherkit.report.registry import flat_numbers, ordered_sections

ALL_KEYS = [s.key for s in ordered_sections()]


def _section(quick_report, key):
    _, _, results, _ = quick_report
    assert results is not None, "results.json was not written"
    sec = results["sections"][key]
    assert sec["ok"], f"section {key} failed: {sec['error']}\n{sec['traceback']}"
    return sec["numbers"]


def test_demo_exits_cleanly_and_writes_the_report(quick_report):
    rc, out, results, seconds = quick_report
    failed = {k: v["error"] for k, v in (results or {}).get("sections", {}).items() if not v["ok"]}
    assert rc == 0, f"demo exited {rc}; failed sections: {failed}"
    assert (out / "index.html").is_file() and (out / "results.json").is_file()
    assert list(results["sections"]) == ALL_KEYS
    assert results["ok"] is True and results["quick"] is True and results["seed"] == 0
    # target: ≤ 180 s wall on 2 idle cores; wall time on a shared machine is noise, CPU time is not
    assert seconds["cpu"] < 180, f"--quick used {seconds['cpu']:.0f} s of CPU (wall {seconds['wall']:.0f} s)"


@pytest.mark.parametrize("key", ALL_KEYS)
def test_every_section_is_ok_with_finite_numbers_and_figures(quick_report, key):
    numbers = _section(quick_report, key)
    flat = flat_numbers(numbers)
    assert flat, f"section {key} reported no numbers"
    bad = {k: v for k, v in flat.items() if isinstance(v, float) and not math.isfinite(v) or v in ("nan", "inf", "-inf")}
    assert not bad, f"non-finite numbers in {key}: {bad}"
    _, out, results, _ = quick_report
    figures = results["sections"][key]["figures"]
    assert figures, f"section {key} has no figures"
    for name, file in figures.items():
        data = (out / file).read_bytes()
        assert is_png(data), f"{file} is not a valid PNG"


def test_every_png_decodes(quick_report):
    import matplotlib.image as mpimg

    _, out, results, _ = quick_report
    files = [f for s in results["sections"].values() for f in s["figures"].values()]
    assert len(files) >= 9
    for f in files:
        img = mpimg.imread(out / f)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, f
        assert float(img[..., :3].std()) > 0.01, f"{f} is blank"


def test_index_is_self_contained(quick_report):
    _, out, results, _ = quick_report
    page = (out / "index.html").read_text(encoding="utf-8")
    n_figures = sum(len(s["figures"]) for s in results["sections"].values())
    assert page.count("src='data:image/png;base64,") == n_figures
    # nothing to fetch: no src/href to a URL, no stylesheet or script from elsewhere
    assert not re.search(r"""(src|href)\s*=\s*['"]?\s*(https?:|//)""", page, re.I)
    assert "<link" not in page.lower() and "@import" not in page and "url(" not in page
    for key in ALL_KEYS:
        assert f"id='{key}'" in page


def test_likelihood_numbers_match_closed_forms(quick_report):
    n = _section(quick_report, "likelihood")
    for name, k, trials, se in (("6/10", 6, 10, 0.155), ("60/100", 60, 100, 0.049)):
        b = n["binomial"][name]
        p = k / trials
        assert b["p_hat"] == pytest.approx(p, abs=1e-9)
        assert b["se"] == pytest.approx(math.sqrt(p * (1 - p) / trials), rel=1e-6)  # closed form
        assert round(b["se"], 3) == se  # the numbers the issue quotes
        assert b["fisher_information"] == pytest.approx(trials / (p * (1 - p)), rel=1e-6)
        z = sps.norm.ppf(0.975)
        assert b["wald"] == pytest.approx([p - z * b["se"], p + z * b["se"]], abs=1e-6)
        # profile endpoints: ℓ(p) − ℓ(p̂) = −χ²₁(0.95)/2, computed here with numpy
        for end in b["profile"]:
            rel = k * np.log(end / p) + (trials - k) * np.log((1 - end) / (1 - p))
            assert rel == pytest.approx(-sps.chi2.ppf(0.95, 1) / 2, abs=1e-3)
    # n = 10 is visibly skewed (profile shifted left of Wald); n = 100 nearly symmetric
    assert n["binomial"]["6/10"]["profile"][1] < n["binomial"]["6/10"]["wald"][1] - 0.03
    a = n["asymptotics"]
    assert a["asymptotic_variance"] == pytest.approx(a["rate"] ** 2)  # I(λ) = 1/λ²
    # seeded simulation, 2000 replicates: sd of the variance estimate ≈ √(2/2000) ≈ 3 %
    assert 0.88 < a["variance_ratio"] < 1.15
    assert abs(a["z_mean"]) < 0.4  # bias √n·λ/(n−1) ≈ 0.14, plus noise ≈ 0.045
    assert 0.93 < a["wald_coverage_95"] < 0.97
    assert a["ks_statistic"] < 0.05


def test_geometry_kl_matches_half_dFd(quick_report):
    n = _section(quick_report, "geometry")
    g = n["gaussians"]
    for key, sigma in (("sigma_2", 2.0), ("sigma_0.5", 0.5)):
        assert g[key]["kl"] == pytest.approx(1 / (2 * sigma**2))
        assert g[key]["kl_quadrature"] == pytest.approx(g[key]["kl"], rel=1e-6)
        assert g[key]["half_gap2_fisher"] == pytest.approx(g[key]["kl"])
    check = n["kl_check"]
    eps = np.array(check["epsilon"])
    for direction in ("random", "top_eigenvector"):
        c = check[direction]
        kl, half = np.array(c["kl"]), np.array(c["half_eps2_dFd"])
        assert (kl > 0).all() and c["dFd"] > 0
        np.testing.assert_allclose(half, 0.5 * eps**2 * c["dFd"], rtol=1e-12)
        small = eps < 0.02  # KL = ½ε² dᵀFd + O(ε³): within 2 % at ε < 0.02
        np.testing.assert_allclose(kl[small], half[small], rtol=0.02)
        assert abs(kl[0] / half[0] - 1) < 2e-3
        assert abs(kl[0] / half[0] - 1) < abs(kl[-1] / half[-1] - 1)  # the error grows with ε
    assert check["top_eigenvector"]["dFd"] > check["random"]["dFd"]
    h = n["fisher_vs_hessian"]
    assert h["rel_diff_expected_hessian"] < 1e-10  # an identity, up to float64 rounding
    assert h["rel_diff_observed_hessian"] > 1e-3  # the observed Hessian is a different matrix
    assert h["min_eig_fisher"] > -1e-10


def test_spectrum_errors_are_ordered(quick_report):
    n = _section(quick_report, "spectrum")
    e = n["relative_frobenius_error"]
    assert set(e) == {"diag", "block", "kfac", "ekfac"}
    for v in e.values():
        assert 0 < v < 1.5
    tol = 1e-9
    assert e["block"] <= e["ekfac"] + tol  # best block-diagonal approximation (Frobenius)
    assert e["ekfac"] <= e["kfac"] + tol  # EKFAC refits KFAC's eigenvalues optimally
    assert e["block"] <= e["diag"] + tol  # the diagonal is a coarser block-diagonal
    assert n["min_eigenvalue"] > -1e-10 * n["top_eigenvalue"]  # PSD
    assert n["trace"] >= n["top_eigenvalue"] > 0
    assert 0 < n["trace_share_top10"] <= 1
    assert 10 < n["eigenvalues_above_1e-3_top"] <= n["parameters"]


def test_continual_numbers_agree_with_their_accuracy_matrices(quick_report):
    n = _section(quick_report, "continual")
    methods = n["methods"]
    assert set(methods) == {"finetune", "l2", "ewc"}
    for m, v in methods.items():
        row = np.array(v["final_row"])
        assert len(row) == n["tasks"] >= 2
        assert ((row >= 0) & (row <= 1)).all()
        assert v["acc"] == pytest.approx(row.mean())  # average accuracy = mean of R's last row
        assert 0 <= v["forgetting"] <= 1 and -1 <= v["bwt"] <= 1
    # what EWC is for: it forgets less than plain fine-tuning
    assert methods["ewc"]["forgetting"] < methods["finetune"]["forgetting"]


def test_natural_gradient_curves_are_like_for_like_and_summaries_consistent(quick_report):
    n = _section(quick_report, "natural_gradient")
    assert n["problems"], "no problems were run"
    for prob, p in n["problems"].items():
        methods = p["methods"]
        assert {"sgd", "adam"} <= set(methods) and any(m in methods for m in ("kfac", "ekfac", "diag", "implicit"))
        starts = {m: v["loss_curve"][0] for m, v in methods.items()}
        assert max(starts.values()) - min(starts.values()) < 1e-6, f"{prob}: different initial models {starts}"
        # the target is the worse of the two baselines' final losses (recomputed here)
        assert p["target_loss"] == pytest.approx(max(methods["sgd"]["final_loss"], methods["adam"]["final_loss"]))
        for m, v in methods.items():
            curve = np.array(v["loss_curve"])
            assert np.isfinite(curve).all() and len(curve) == n["epochs"] + 1
            assert v["final_loss"] == pytest.approx(curve[-1])
            assert curve[-1] < curve[0], f"{prob}/{m} did not reduce the training loss"
            reached = [i for i, x in enumerate(curve) if x <= p["target_loss"]]
            if not reached:
                assert v["epochs_to_target"] is None
            elif reached[0] == 0:
                assert v["epochs_to_target"] == 0
            else:  # interpolated in log-loss between the last epoch above and the first at/below target
                e = reached[0]
                frac = np.log(curve[e - 1] / p["target_loss"]) / np.log(curve[e - 1] / curve[e])
                assert v["epochs_to_target"] == pytest.approx(e - 1 + frac, rel=1e-9)
            assert v["seconds_per_epoch"] > 0


def _labels_to_target(n, acc, target):
    """First crossing of ``target`` by linear interpolation between rounds (None: never)."""
    for i, a in enumerate(acc):
        if a >= target:
            if i == 0:
                return float(n[0])
            return n[i - 1] + (target - acc[i - 1]) * (n[i] - n[i - 1]) / (a - acc[i - 1])
    return None


def test_active_learning_curves_and_summaries_are_consistent(quick_report):
    n = _section(quick_report, "active")
    labels = np.array(n["n_labels"])
    assert (np.diff(labels) > 0).all() and len(labels) >= 3
    strategies = n["strategies"]
    assert {"random", "egl"} <= set(strategies)
    for name, v in strategies.items():
        acc = np.array(v["acc_curve"])
        assert len(acc) == len(labels) and ((acc >= 0) & (acc <= 1)).all()
        assert v["final_acc"] == pytest.approx(acc[-1])
        # AULC = area under the learning curve / its width (trapezoid rule, recomputed here)
        assert v["aulc"] == pytest.approx(np.trapezoid(acc, labels) / (labels[-1] - labels[0]), rel=1e-9)
        expected = _labels_to_target(labels, acc, n["target"])
        if expected is None:
            assert v["labels_to_target"] is None
        else:
            assert v["labels_to_target"] == pytest.approx(expected, rel=1e-9)
        assert v["select_seconds"] >= 0
    # every strategy starts from the same seeded initial labels and model
    assert len({round(v["acc_curve"][0], 12) for v in strategies.values()}) == 1
    # labelling more helps: random's accuracy at the end beats its start
    assert strategies["random"]["acc_curve"][-1] > strategies["random"]["acc_curve"][0]
