"""The ``kshot`` command, run in-process through ``kshot.cli.main`` (and once as a subprocess).

Every bad input must end with exit status 2, exactly one line on stderr starting with
``kshot: error:``, no traceback, and nothing half-written. The positive paths use one tiny real
run on Omniglot (lake split), trained once per module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from kshot.checkpoint import load_checkpoint
from kshot.cli import main

TRAIN_PROTONET = ["train", "protonet", "--dataset", "omniglot", "--split", "lake", "--ways", "5",
                  "--shots", "1", "--queries", "2", "--episodes", "10", "--val-every", "5",
                  "--val-episodes", "5", "--hidden", "8", "--threads", "1", "--quiet"]


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def env(tmp_path_factory, shared_data: Path):
    """A module-wide cache dir (Omniglot decodes once) and the shared data as the data dir."""
    cache = tmp_path_factory.mktemp("kshot-cache")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KSHOT_CACHE_DIR", str(cache))
        patch.setenv("KSHOT_DATA_DIR", str(shared_data))
        yield SimpleNamespace(cache=cache, data=shared_data)
    torch.set_num_threads(threads)  # the CLI sets the process's thread count from --threads


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished 10-episode ProtoNet run (conv4, 8 channels) on Omniglot's lake split."""
    out = tmp_path_factory.mktemp("runs") / "protonet"
    assert main([*TRAIN_PROTONET, "--out", str(out)]) == 0
    return out


def kshot(capsys, *argv) -> tuple[int, str, str]:
    """Run ``kshot argv`` in-process: (exit status, stdout, stderr)."""
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(code: int, out: str, err: str, match: str | None = None) -> str:
    assert code == 2, (code, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kshot: error: "), err
    if match is not None:
        assert match in lines[0], lines[0]
    return lines[0]


def tmp_files(*roots: Path) -> list[Path]:
    return [path for root in roots if root.exists() for path in root.rglob(".tmp-*")]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes()
            for path in sorted(root.rglob("*")) if path.is_file()}


def assert_clean(env, *roots: Path) -> None:
    assert tmp_files(env.cache, *roots) == []


def _truncated_copy(source: Path, data_root: Path, fraction: float = 0.5) -> Path:
    target = data_root / "omniglot" / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def _corrupted_member_copy(source: Path, data_root: Path, member_filter) -> Path:
    """A copy of ``source`` whose central directory is intact but whose first deflated member
    that passes ``member_filter`` has scrambled compressed data."""
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        infos = sorted(archive.infolist(), key=lambda info: info.filename)
        info = next(i for i in infos if i.compress_type == zipfile.ZIP_DEFLATED
                    and i.filename.endswith(".png") and member_filter(i.filename))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for index in range(start, start + info.compress_size):
        data[index] ^= 0x5A
    target = data_root / "omniglot" / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(bytes(data))
    return target


@pytest.fixture(scope="module")
def omniglot_pngs(tmp_path_factory, env) -> SimpleNamespace:
    """A support folder of 3 Omniglot characters (one PNG each) and 2 query PNGs."""
    root = tmp_path_factory.mktemp("pngs")
    support, queries = root / "support", []
    with zipfile.ZipFile(env.data / "omniglot" / "images_evaluation.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".png"))
        characters: dict[str, list[str]] = {}
        for name in names:
            characters.setdefault(name.rsplit("/", 1)[0], []).append(name)
        for index, (character, members) in enumerate(list(characters.items())[:3]):
            label = f"glyph{index}"
            (support / label).mkdir(parents=True)
            (support / label / "a.png").write_bytes(archive.read(members[0]))
            if index < 2:
                query = root / f"query{index}.png"
                query.write_bytes(archive.read(members[1]))
                queries.append(query)
    return SimpleNamespace(support=support, queries=queries,
                           labels={"glyph0", "glyph1", "glyph2"})


# --- the tiny real run -------------------------------------------------------------------------


def test_train_writes_run(run_dir: Path) -> None:
    names = {path.name for path in run_dir.iterdir()}
    assert {"config.json", "best.safetensors", "best.json", "last.safetensors", "last.json",
            "metrics.jsonl"} <= names
    assert not [name for name in names if name.startswith(".tmp-")]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["method"] == "protonet"
    assert config["method_config"]["hidden"] == 8
    assert config["train_config"]["episodes"] == 10 and config["train_config"]["ways"] == 5
    assert config["data"]["dataset"] == "omniglot" and config["data"]["split"] == "lake"
    assert config["data"]["item_shape"] == [1, 28, 28]
    last = json.loads((run_dir / "last.json").read_text())
    assert last["finished"] is True and last["step"] == 10
    kinds = [json.loads(line)["kind"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("val") == 2  # at 5 and 10 episodes


def test_eval_json(capsys, run_dir: Path) -> None:
    argv = ["eval", run_dir, "--json", "--episodes", 10, "--queries", 5, "--threads", 1]
    code, out, err = kshot(capsys, *argv)
    assert code == 0, err
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert set(record) == {"method", "dataset", "split", "test_set", "test_classes",
                           "test_rotations", "ways", "shots", "queries", "episodes", "seed",
                           "accuracy", "ci95", "overlap", "run", "checkpoint",
                           "checkpoint_episodes", "seconds", "episodes_per_s"}
    assert record["test_set"] == "omniglot/lake/test" and record["test_classes"] == 659
    assert record["test_rotations"] is False and record["overlap"] == 0
    assert record["run"] == str(run_dir) and record["checkpoint"] == "best"
    assert record["method"] == "protonet" and record["dataset"] == "omniglot"
    assert record["split"] == "lake"
    assert (record["ways"], record["shots"], record["episodes"], record["seed"]) == (5, 1, 10, 123)
    assert 0 <= record["accuracy"] <= 100 and record["ci95"] >= 0
    # evaluation episodes are a pure function of the seed: the same command, the same score
    code, again, _ = kshot(capsys, *argv)
    assert code == 0
    assert json.loads(again)["accuracy"] == record["accuracy"]


def test_eval_lake_runs_json(capsys, run_dir: Path) -> None:
    code, out, err = kshot(capsys, "eval", run_dir, "--lake-runs", "--json", "--threads", 1)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert {"error", "per_run"} <= set(record)
    assert record["split"] == "lake-runs" and record["ways"] == 20
    assert len(record["per_run"]) == 20
    assert all(0 <= error <= 100 for error in record["per_run"])
    # 20 test items per run: errors are multiples of 5%
    assert all(error % 5 == 0 for error in record["per_run"])
    assert record["error"] == pytest.approx(sum(record["per_run"]) / 20, abs=0.01)


def test_resume_finished_run_is_harmless(capsys, run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    before = snapshot(copy)
    code, _, err = kshot(capsys, "train", "protonet", "--out", copy, "--resume", "--quiet",
                         "--threads", 1)
    assert code == 0, err
    after = snapshot(copy)
    for name in ("config.json", "best.safetensors", "best.json", "metrics.jsonl"):
        assert after[name] == before[name], name
    last_before, _ = load_checkpoint(run_dir / "last.safetensors")
    last_after, metadata = load_checkpoint(copy / "last.safetensors")
    for name, tensor in last_before.items():
        if name.startswith("model."):
            assert torch.equal(last_after[name], tensor), name
    assert metadata["finished"] is True and metadata["step"] == 10
    assert not [name for name in after if ".tmp-" in name]


def test_train_into_existing_run_without_resume(capsys, env, run_dir: Path) -> None:
    before = snapshot(run_dir)
    code, out, err = kshot(capsys, *TRAIN_PROTONET, "--out", run_dir)
    assert_user_error(code, out, err, match="--resume")
    assert snapshot(run_dir) == before
    assert_clean(env, run_dir)


def test_predict_prints_one_line_per_query(capsys, run_dir: Path, omniglot_pngs) -> None:
    queries = omniglot_pngs.queries
    code, out, err = kshot(capsys, "predict", run_dir, "--support", omniglot_pngs.support,
                           *queries, "--threads", 1)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == len(queries)
    for line, query in zip(lines, queries):
        path, label, probability = line.split("\t")
        assert path == str(query)
        assert label in omniglot_pngs.labels
        assert 0 < float(probability) <= 1
    code, out, _ = kshot(capsys, "predict", run_dir, "--support", omniglot_pngs.support,
                         *queries, "--json", "--threads", 1)
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["image"] for r in records] == [str(q) for q in queries]
    assert [r["label"] for r in records] == [line.split("\t")[1] for line in lines]


def test_datasets_lists_archives(capsys, env) -> None:
    code, out, err = kshot(capsys, "datasets", "--json", "--data-dir", env.data)
    assert code == 0, err
    records = list(map(json.loads, out.splitlines()))
    rows = {row["name"]: row for row in records if "name" in row}
    splits = {row["split"]: row["classes"] for row in records if "split" in row}
    assert "Gurmukhi 42-45" in splits["omniglot/vinyals"]
    assert "digits 5-9" in splits["mnist/heldout, digits/heldout"]
    for name in ("images_background", "images_evaluation", "images_background_small1",
                 "images_background_small2", "all_runs"):
        assert rows[name]["present"] is True, name
        assert rows[name]["verified"] is True, (name, rows[name]["verified"])
    code, out, _ = kshot(capsys, "datasets", "--data-dir", env.data)
    assert code == 0
    assert "images_background" in out and "present, structure ok" in out
    assert "omniglot/lake: train 864 background characters" in out


def test_plot_writes_png(capsys, run_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "curves.png"
    before = snapshot(run_dir)
    code, out, err = kshot(capsys, "plot", run_dir, "--out", target)
    assert code == 0, err
    assert out.strip() == str(target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert snapshot(run_dir) == before


def test_knn_train_then_eval(capsys, tmp_path: Path) -> None:
    out_dir = tmp_path / "knn"
    code, _, err = kshot(capsys, "train", "knn", "--dataset", "omniglot", "--split", "lake",
                         "--episodes", 0, "--val-episodes", 0, "--out", out_dir, "--quiet",
                         "--threads", 1)
    assert code == 0, err
    assert "trained knn for 0 episodes" in err and "no validation episodes" in err
    assert {"config.json", "classes.json", "last.safetensors"} <= {
        p.name for p in out_dir.iterdir()}
    assert json.loads((out_dir / "config.json").read_text())["method"] == "knn"
    code, out, err = kshot(capsys, "eval", out_dir, "--json", "--episodes", 5, "--queries", 5,
                           "--threads", 1)
    assert code == 0, err
    record = json.loads(out)
    assert record["method"] == "knn" and 0 <= record["accuracy"] <= 100


# --- bad input: exit 2, one line, nothing half-written -----------------------------------------


def test_unknown_method(capsys, env, tmp_path: Path) -> None:
    code, out, err = kshot(capsys, "train", "no-such-method", "--out", tmp_path / "run")
    assert_user_error(code, out, err, match="no-such-method")
    assert not (tmp_path / "run").exists()


def test_unknown_dataset(capsys, env, tmp_path: Path, run_dir: Path) -> None:
    code, out, err = kshot(capsys, "train", "protonet", "--dataset", "no-such-data",
                           "--out", tmp_path / "run")
    assert_user_error(code, out, err, match="no-such-data")
    assert not (tmp_path / "run").exists()
    code, out, err = kshot(capsys, "eval", run_dir, "--dataset", "no-such-data")
    assert_user_error(code, out, err, match="no-such-data")


def test_ways_larger_than_classes(capsys, env, tmp_path: Path) -> None:
    code, out, err = kshot(capsys, "train", "protonet", "--dataset", "omniglot", "--split", "lake",
                           "--train-on", "train", "--ways", 2000, "--episodes", 1,
                           "--out", tmp_path / "run", "--quiet", "--threads", 1)
    line = assert_user_error(code, out, err, match="2000")
    assert "classes" in line
    assert not (tmp_path / "run").exists()
    assert_clean(env, tmp_path)


def test_shots_plus_queries_larger_than_class(capsys, env, tmp_path: Path, run_dir: Path) -> None:
    code, out, err = kshot(capsys, "train", "protonet", "--dataset", "omniglot", "--split", "lake",
                           "--shots", 10, "--queries", 11, "--episodes", 1,
                           "--out", tmp_path / "run", "--quiet", "--threads", 1)
    assert_user_error(code, out, err, match="--shots or --queries")
    assert not (tmp_path / "run").exists()
    code, out, err = kshot(capsys, "eval", run_dir, "--shots", 10, "--queries", 11,
                           "--episodes", 2, "--json", "--threads", 1)
    assert_user_error(code, out, err, match="--shots or --queries")
    assert_clean(env, tmp_path, run_dir)


def test_truncated_lake_runs_archive(capsys, env, monkeypatch, tmp_path: Path,
                                     run_dir: Path) -> None:
    data, cache = tmp_path / "data", tmp_path / "cache"
    _truncated_copy(env.data / "omniglot" / "all_runs.zip", data)
    monkeypatch.setenv("KSHOT_CACHE_DIR", str(cache))
    code, out, err = kshot(capsys, "eval", run_dir, "--lake-runs", "--data-dir", data,
                           "--threads", 1)
    assert_user_error(code, out, err, match="all_runs.zip")
    assert tmp_files(data, cache) == []
    assert not list(cache.rglob("*.npz"))  # nothing cached from a broken archive


def test_truncated_background_archive(capsys, env, monkeypatch, tmp_path: Path) -> None:
    data, cache = tmp_path / "data", tmp_path / "cache"
    _truncated_copy(env.data / "omniglot" / "images_background.zip", data, fraction=0.1)
    monkeypatch.setenv("KSHOT_CACHE_DIR", str(cache))
    code, out, err = kshot(capsys, *TRAIN_PROTONET, "--data-dir", data, "--out", tmp_path / "run")
    assert_user_error(code, out, err, match="images_background.zip")
    assert not (tmp_path / "run").exists()
    assert tmp_files(data, cache) == []
    assert not list(cache.rglob("*.npz"))  # nothing cached from a broken archive


def test_corrupt_member_in_lake_runs_archive(capsys, env, monkeypatch, tmp_path: Path,
                                             run_dir: Path) -> None:
    data, cache = tmp_path / "data", tmp_path / "cache"
    _corrupted_member_copy(env.data / "omniglot" / "all_runs.zip", data,
                           lambda name: name.startswith("run05/"))
    monkeypatch.setenv("KSHOT_CACHE_DIR", str(cache))
    code, out, err = kshot(capsys, "eval", run_dir, "--lake-runs", "--data-dir", data,
                           "--threads", 1)
    assert_user_error(code, out, err, match="all_runs.zip")
    assert tmp_files(data, cache) == []
    assert not list(cache.rglob("*.npz"))


def test_corrupt_member_in_background_archive(capsys, env, monkeypatch, tmp_path: Path) -> None:
    data, cache = tmp_path / "data", tmp_path / "cache"
    _corrupted_member_copy(env.data / "omniglot" / "images_background.zip", data,
                           lambda name: True)
    monkeypatch.setenv("KSHOT_CACHE_DIR", str(cache))
    code, out, err = kshot(capsys, *TRAIN_PROTONET, "--data-dir", data, "--out", tmp_path / "run")
    assert_user_error(code, out, err, match="images_background.zip")
    assert not (tmp_path / "run").exists()
    assert tmp_files(data, cache) == []
    assert not list(cache.rglob("*.npz"))


def test_undecodable_query_image(capsys, env, run_dir: Path, omniglot_pngs,
                                 tmp_path: Path) -> None:
    garbage = tmp_path / "q.png"
    garbage.write_bytes(b"this is not a png\x00\x01\x02" * 8)
    code, out, err = kshot(capsys, "predict", run_dir, "--support", omniglot_pngs.support,
                           garbage, "--threads", 1)
    assert_user_error(code, out, err, match="q.png")
    assert out == ""
    code, out, err = kshot(capsys, "predict", run_dir, "--support", omniglot_pngs.support,
                           tmp_path / "missing.png", "--threads", 1)
    assert_user_error(code, out, err, match="missing.png")


def test_undecodable_support_image(capsys, env, run_dir: Path, omniglot_pngs,
                                   tmp_path: Path) -> None:
    support = tmp_path / "support"
    shutil.copytree(omniglot_pngs.support, support)
    (support / "glyph1" / "broken.png").write_bytes(b"\x89PNG but not really")
    code, out, err = kshot(capsys, "predict", run_dir, "--support", support,
                           omniglot_pngs.queries[0], "--threads", 1)
    assert_user_error(code, out, err, match="broken.png")


def test_train_into_run_of_another_method(capsys, env, run_dir: Path) -> None:
    before = snapshot(run_dir)
    code, out, err = kshot(capsys, "train", "knn", "--dataset", "omniglot", "--split", "lake",
                           "--episodes", 0, "--out", run_dir, "--quiet", "--threads", 1)
    assert_user_error(code, out, err, match="'protonet' run, not 'knn'")
    assert snapshot(run_dir) == before
    assert_clean(env, run_dir)


def test_eval_of_a_folder_that_is_not_a_run(capsys, env, tmp_path: Path) -> None:
    code, out, err = kshot(capsys, "eval", tmp_path, "--json")
    assert_user_error(code, out, err, match="not a kshot run directory")


def _edited_run(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "edited"
    shutil.copytree(run_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    assert config["method_config"]["hidden"] == 8
    config["method_config"]["hidden"] = 16
    (copy / "config.json").write_text(json.dumps(config, indent=2))
    return copy


def test_checkpoint_not_matching_config(capsys, env, run_dir: Path, tmp_path: Path) -> None:
    edited = _edited_run(run_dir, tmp_path)
    before = snapshot(edited)
    code, out, err = kshot(capsys, "eval", edited, "--json", "--episodes", 2, "--threads", 1)
    assert_user_error(code, out, err, match="does not match its config")
    assert snapshot(edited) == before


def test_subprocess_exit_status_and_single_line(env, run_dir: Path, tmp_path: Path) -> None:
    """The installed entry point: exit status 2 and one stderr line, no traceback."""
    edited = _edited_run(run_dir, tmp_path)
    script = Path(sys.executable).with_name("kshot")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "kshot.cli"]
    result = subprocess.run([*command, "eval", str(edited), "--json", "--episodes", "2",
                             "--threads", "1"], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ), check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kshot: error: "), result.stderr
    assert "does not match its config" in lines[0]
    assert result.stdout == ""


def test_train_help_names_the_methods_defaults(capsys) -> None:
    """``--help`` names the training defaults the method sets, not the bare TrainConfig's."""
    for method, expected in [("meta-lstm", "(default: 1 at 1-shot, 4 at 5-shot)"),
                             ("maml", "(default: 32)"), ("protonet", "(default: 1)")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["train", method, "--help"])
        assert exit_info.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert f"--meta-batch META_BATCH Episodes per optimiser step. {expected}" in text, method
