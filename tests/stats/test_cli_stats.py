"""`fisherkit stats ...` through fisherkit.cli.main: return codes, printed numbers, the PNG."""

import math
import re

import pytest

from fisherkit.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_binomial_prints_estimate_se_intervals_and_fisher(capsys):
    assert main(["stats", "binomial", "--successes", "6", "--trials", "10"]) == 0
    out = capsys.readouterr().out
    assert "0.6" in out and "0.1549" in out  # p̂ and √(0.6·0.4/10)
    assert "[0.2964, 0.9036]" in out  # Wald
    assert "[0.3, 0.8544]" in out  # profile
    assert "41.67" in out  # Fisher information 10/(0.6·0.4)


def test_binomial_compare_and_plot(tmp_path, capsys):
    png = tmp_path / "ll.png"
    rc = main(["stats", "binomial", "--successes", "6", "--trials", "10", "--compare", "60/100", "--plot", str(png)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "0.04899" in out and "60/100" in out
    assert "SE ratio p 3.16x" in out  # √10: ten times the information
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["poisson", "--data", "3,1,4,1,5"], ["2.8", "0.7483"]),  # λ̂ = x̄, se = √(x̄/n)
        (["normal", "--data", "2.1,1.9,2.5,2.2,1.7"], ["2.08", "mu", "sigma"]),
        (["exponential", "--data", "0.5 1.5", "--cov-type", "observed"], ["1", "0.7071"]),
        (["bernoulli", "--data", "0,0,0,0"], ["undefined (boundary)", "[0, 0.3813]", "boundary"]),
    ],
)
def test_data_families(argv, expected, capsys):
    assert main(["stats", *argv]) == 0
    out = capsys.readouterr().out
    for text in expected:
        assert text in out, text


def test_data_family_plot_with_compare(tmp_path):
    png = tmp_path / "normal.png"
    assert main(["stats", "normal", "--data", "1,2,3,4,2.5", "--compare", "1,2,3,4,2.5,1.5,3.5,2,3,2.2",
                 "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    "argv, message",
    [
        (["binomial", "--successes", "12", "--trials", "10"], "exceed n=10"),
        (["binomial", "--successes", "6", "--trials", "10", "--compare", "60-100"], "SUCCESSES/TRIALS"),
        (["binomial", "--successes", "6", "--trials", "0"], "positive integer"),
        (["poisson", "--data", "3,-1,4"], "value -1.0 at index 1"),
        (["poisson", "--data", "3,x,4"], "item 1 ('x') is not a number"),
        (["normal", "--data", "1,2", "--alpha", "2"], "--alpha"),
        (["normal", "--data", "1,2", "--cov-type", "robust"], "--cov-type"),
        (["poisson"], "Missing option"),
    ],
)
def test_user_mistakes_give_one_line_and_exit_2(argv, message, capsys):
    assert main(["stats", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert err.strip().count("\n") == 0


def test_help_includes_an_example(capsys):
    assert main(["stats", "--help"]) == 0
    assert "Example: fisherkit stats binomial --successes 6 --trials 10" in capsys.readouterr().out
    assert main(["stats", "poisson", "--help"]) == 0
    assert "Example: fisherkit stats poisson --data" in capsys.readouterr().out


def test_plot_function_returns_a_figure():
    import fisherkit as fk

    fig = fk.stats.plots.plot_loglik(fk.stats.Binomial(10), [6], compare=(fk.stats.Binomial(100), [60]))
    ax = fig.axes[0]
    assert len(ax.lines) >= 5  # two curves, two parabolas, the χ² line, MLE markers
    curve = ax.lines[0].get_ydata()
    assert max(curve) == pytest.approx(0.0, abs=1e-3) and math.isfinite(min(curve))


def test_semicolons_and_0_vs_0_point_0_are_read_as_numbers(capsys):
    """Issue 18 (CSV): "0" and "0.0" must be the same value and ';' must not be misread. The stats
    command takes its data from --data, not a file: 0;0.0;1;1.0 is two zeros and two ones, p̂ = 0.5,
    SE = √(0.25/4) = 0.25."""
    assert main(["stats", "bernoulli", "--data", "0;0.0;1;1.0"]) == 0
    out = capsys.readouterr().out
    assert "4 observation(s)" in out
    assert re.search(r"│ p\s+│\s+0\.5 │\s+0\.25 │", out)


def test_cauchy_command_expected_and_observed_standard_errors(capsys):
    """A non-exponential family from the CLI: with cov_type expected the SE of both parameters is
    γ̂·√(2/n) (I = diag(1/(2γ²))), γ̂ checked against scipy.stats.cauchy.fit; observed differs."""
    from scipy import stats

    data = [2.1, 1.9, 2.5, 2.2, 1.7, 30.0, -4.0, 2.05]
    assert main(["stats", "cauchy", "--data", ",".join(map(str, data))]) == 0
    expected_out = capsys.readouterr().out
    _, scale = stats.cauchy.fit(data)
    assert f"{scale * math.sqrt(2 / len(data)):.4g}" in expected_out
    assert main(["stats", "cauchy", "--data", ",".join(map(str, data)), "--cov-type", "observed"]) == 0
    observed_out = capsys.readouterr().out
    assert "cov_type = observed" in observed_out
    assert f"{scale * math.sqrt(2 / len(data)):.4g}" not in observed_out
