"""The command line neither loses work nor misreads the user: output paths are checked before any
computation (the study functions are replaced by spies that fail the test if called), bad counts
are refused, and a CSV is read as a person means it ("0" and "0.0" one class, ';' separators,
binary files named).
"""

import numpy as np
import pytest

from fisherkit.cli import main


class Spy:
    def __init__(self, result=None):
        self.calls, self.result = 0, result

    def __call__(self, *a, **k):
        self.calls += 1
        if self.result is None:
            raise AssertionError("the computation started")
        return self.result


FAKE_SPECTRUM = {"parameters": 10, "samples": 5, "test_accuracy": 0.5, "trace": 1.0, "top_eigenvalues": [1.0],
                 "relative_error": {"diag": 0.1}}


@pytest.fixture
def spectrum(monkeypatch):
    from fisherkit.studies import spectrum

    spy = Spy(FAKE_SPECTRUM)
    monkeypatch.setattr(spectrum, "digits_study", spy)
    return spy


def test_fisher_json_into_a_missing_folder_creates_it(tmp_path, spectrum):
    target = tmp_path / "new" / "sub" / "f.json"
    assert main(["fisher", "--json", str(target), "--no-progress"]) == 0
    assert target.is_file() and spectrum.calls == 1


@pytest.mark.parametrize("where,match", [("folder", "is a folder"), ("under-a-file", "is a file, not a folder")])
def test_fisher_json_unwritable_fails_before_computing(tmp_path, spectrum, capsys, where, match):
    (tmp_path / "afile").write_text("x")
    target = tmp_path if where == "folder" else tmp_path / "afile" / "f.json"
    assert main(["fisher", "--json", str(target), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert match in err and "before computing" in err and spectrum.calls == 0


def test_fisher_plot_read_only_file_fails_before_computing(tmp_path, spectrum, capsys):
    png = tmp_path / "p.png"
    png.write_bytes(b"")
    png.chmod(0o444)
    assert main(["fisher", "--plot", str(png), "--no-progress"]) == 2
    assert "read-only" in capsys.readouterr().err and spectrum.calls == 0


@pytest.mark.parametrize("command,module,attr", [
    ("ngd", "fisherkit.studies.ngd", "run_comparison"),
    ("ewc", "fisherkit.studies.continual", "run_stream"),
    ("active", "fisherkit.studies.active", "run_comparison"),
    ("merge", "fisherkit.studies.merge", "run"),
    ("prune", "fisherkit.studies.prune", "run"),
])
def test_out_pointing_at_a_file_fails_before_computing(tmp_path, monkeypatch, capsys, command, module, attr):
    import importlib

    spy = Spy()
    mod = importlib.import_module(module)
    monkeypatch.setattr(mod, attr, spy)
    if command == "active":
        monkeypatch.setattr("fisherkit.commands.active.run_comparison", spy, raising=False)
    f = tmp_path / "results.txt"
    f.write_text("x")
    args = [command, "--out", str(f), "--quick"] + (["--no-progress"] if command in ("ngd", "ewc", "active") else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is a file" in err and spy.calls == 0


def test_ewc_n_tasks_zero_is_refused(monkeypatch, capsys):
    from fisherkit.studies import continual

    spy = Spy()
    monkeypatch.setattr(continual, "run_stream", spy)
    assert main(["ewc", "--n-tasks", "0", "--quick", "--no-progress"]) == 2
    assert "--n-tasks" in capsys.readouterr().err and spy.calls == 0


def test_make_stream_zero_tasks_is_not_the_default():
    from fisherkit.continual.streams import make_stream
    from fisherkit.errors import FisherkitError

    with pytest.raises(FisherkitError, match="n_tasks"):
        make_stream("permuted", 0)


# ---- CSV files (fisherkit active --csv) ----------------------------------------------------------

def _csv(tmp_path, text, name="d.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _rows(n=12, sep=",", labels=("0", "1")):
    rng = np.random.default_rng(0)
    lines = [sep.join(["a", "b", "label"])]
    for i in range(n):
        lines.append(sep.join([f"{rng.normal():.3f}", f"{rng.normal():.3f}", labels[i % len(labels)]]))
    return "\n".join(lines) + "\n"


def test_csv_labels_0_and_0_point_0_are_one_class(tmp_path):
    from fisherkit.studies.active import _read_csv

    X, y, c = _read_csv(str(_csv(tmp_path, _rows(labels=("0", "1.0", "0.0", "1")))), None)
    assert c == 2 and sorted(set(y.tolist())) == [0, 1]
    assert y.tolist()[:4] == [0, 1, 0, 1]


def test_csv_text_labels_still_work(tmp_path):
    from fisherkit.studies.active import _read_csv

    _, y, c = _read_csv(str(_csv(tmp_path, _rows(labels=("setosa", "virginica")))), None)
    assert c == 2 and y.tolist()[:2] == [0, 1]


@pytest.mark.parametrize("sep", [";", "\t"])
def test_csv_with_semicolons_or_tabs_is_read(tmp_path, sep):
    from fisherkit.studies.active import _read_csv

    X, y, c = _read_csv(str(_csv(tmp_path, _rows(sep=sep))), None)
    assert X.shape == (12, 2) and c == 2


def test_csv_with_decimal_commas_and_semicolons_is_named(tmp_path, capsys):
    p = _csv(tmp_path, "a;b;label\n" + "".join(f"1,5;2,{i};{i % 2}\n" for i in range(10)))
    assert main(["active", "--csv", str(p), "--quick", "--no-progress"]) == 2
    assert "decimal comma" in capsys.readouterr().err


def test_csv_with_a_single_column_is_named(tmp_path, capsys):
    p = _csv(tmp_path, "label\n" + "".join(f"{i % 2}\n" for i in range(10)))
    assert main(["active", "--csv", str(p), "--quick", "--no-progress"]) == 2
    assert "one column" in capsys.readouterr().err


def test_binary_csv_is_named(tmp_path, capsys):
    p = tmp_path / "d.csv"
    p.write_bytes(bytes(range(256)) * 8)
    assert main(["active", "--csv", str(p), "--quick", "--no-progress"]) == 2
    assert "not a text CSV" in capsys.readouterr().err
