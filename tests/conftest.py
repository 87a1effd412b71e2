"""Shared fixtures: real parallel text from the demo corpus, written in each input format, one small dataset built
by data_prep and one trained run that many tests read (each built once per test run, tests/fixtures/), and the
real SLURM cluster; and the hook that marks and groups the tests for pytest-xdist (pytest.ini)."""
from __future__ import annotations

import gc

gc.disable()  # while the tests are collected (torch, transformers and DeepSpeed imported): pytest_runtestloop

import collections
import itertools
import os
import socket
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
import webdataset as wds

from data_prep.build import BuildReport, build
from data_prep.cleaning import Cleaner
from data_prep.config import CleaningConfig, PairConfig, PrepConfig, config_from_dict
from data_prep.demo_corpus import catalogs
from data_prep.manifest import read_manifest, shard_paths
from data_prep.readers import read_pairs
from data_prep.shard_format import decode_sample
from weam_ds import startup

from fixtures.run_config import launched_run  # noqa: F401 - the launcher tests' run config
from fixtures.shared import built_once


def free_port() -> int:
    """A TCP port nobody listens on right now, for a test's rendezvous or process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_interpreter(code: str) -> list[str]:
    """The lines ``code`` prints, run by a new Python: what a command imports, without this process's modules."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process it started, at once, as a node failure would (torchrun starts its
    workers in sessions of their own, so killing its process group misses them)."""
    import psutil

    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in family:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)


def catalog_pairs(lang: str, n: int) -> list[tuple[str, str]]:
    """The first ``n`` clean (lang, en) pairs of the demo catalogs: real human translations."""
    pair = PairConfig(src_lang=lang, tgt_lang="en", format="po", path=catalogs(lang))
    return list(itertools.islice(Cleaner(CleaningConfig()).clean(read_pairs(pair)), n))


def shard_samples(dataset: Path, pairs: tuple[str, ...] = ("fr-en", "ja-en"), split: str = "train",
                  per_pair: int | None = None) -> list[dict]:
    """Decoded samples of a dataset's shards, pair after pair (the first ``per_pair`` of each), in shard order."""
    manifest = read_manifest(dataset)
    samples = []
    for pair in pairs:
        urls = [str(p) for p in shard_paths(manifest, dataset, pair, split)]
        samples += [decode_sample(s) for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)][:per_pair]
    return samples


def write_moses(directory: Path, name: str, pairs: list[tuple[str, str]]) -> tuple[Path, Path]:
    src, tgt = directory / f"{name}.src", directory / f"{name}.tgt"
    src.write_text("".join(f"{s}\n" for s, _ in pairs), encoding="utf-8")
    tgt.write_text("".join(f"{t}\n" for _, t in pairs), encoding="utf-8")
    return src, tgt


def write_tsv(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    return path


def write_tmx(path: Path, pairs: list[tuple[str, str]], src_lang: str, tgt_lang: str) -> Path:
    units = "".join(
        f'<tu><tuv xml:lang="{src_lang}"><seg>{escape(s)}</seg></tuv>'
        f'<tuv xml:lang="{tgt_lang}-US"><seg>{escape(t)}</seg></tuv></tu>\n' for s, t in pairs)
    path.write_text(f'<?xml version="1.0" encoding="UTF-8"?>\n<tmx version="1.4"><header srclang="{src_lang}"/>'
                    f"<body>\n{units}</body></tmx>\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def fr_pairs() -> list[tuple[str, str]]:
    return catalog_pairs("fr", 600)


@pytest.fixture(scope="session")
def ja_pairs() -> list[tuple[str, str]]:
    return catalog_pairs("ja", 600)


def small_config(tmp: Path, ja_pairs, **overrides) -> dict:
    """Two pairs in two formats: fr-en from the real .po catalogs, ja-en from Moses files."""
    src, tgt = write_moses(tmp, "ja-en", ja_pairs)
    cfg = {
        "output_dir": str(tmp / "dataset"),
        "tokenizer": {"train": {"vocab_size": 1000}},
        # One Gibbs sampler (the default averages 3): a third of eflomal's time in every build the tests make;
        # the aligner's defaults are test_alignment's and the README's.
        "aligner": {"method": "eflomal", "symmetrize": "grow-diag-final-and", "samplers": 1},
        "splits": {"dev": 40, "test": 60},
        "shards": {"max_samples": 150, "max_bytes": 1 << 20},
        "chunk_size": 400,
        "workers": 2,
        "pairs": [{"src_lang": "fr", "tgt_lang": "en", "format": "po", "path": catalogs("fr")},
                  {"src_lang": "ja", "tgt_lang": "en", "format": "moses", "src": str(src), "tgt": str(tgt)}],
    }
    cfg.update(overrides)
    return cfg


def _build_small_dataset(tmp: Path, ja_pairs) -> tuple[Path, PrepConfig, BuildReport]:
    cfg = config_from_dict(small_config(tmp, ja_pairs))
    report = build(cfg)
    return Path(cfg.output_dir), cfg, report


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory, ja_pairs):
    """(dataset dir, its PrepConfig, the BuildReport): built once per test run and read by tests on every
    pytest-xdist worker at once, so tests must not modify it (copy it to change it)."""
    return built_once(tmp_path_factory, "small_dataset", lambda tmp: _build_small_dataset(tmp, ja_pairs))


@pytest.fixture(scope="session")
def trained_run(small_dataset, tmp_path_factory):
    """A ``fixtures.runs.TrainedRun``: a 2-rank ZeRO-3 WEAM run of 16 steps on ``small_dataset`` with checkpoints
    step8 and step16 and the export of step16, built once per test run. Tests read it; one that changes it works
    on ``trained_run.copy(tmp_path / ...)``."""
    from fixtures.runs import build_trained_run  # torch and transformers: imported only where a run is needed

    return built_once(tmp_path_factory, "trained_run", lambda tmp: build_trained_run(small_dataset[0], tmp))


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real two-node SLURM cluster on this machine (tests/slurm_cluster.py), started once for the session and
    stopped at its end. Where it cannot be had the tests skip and say why; under CI=true they fail instead."""
    import os

    import slurm_cluster

    try:
        cluster = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    except slurm_cluster.ClusterUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the SLURM test cluster is required under CI=true: {exc}")
        pytest.skip(f"no SLURM test cluster: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture
def slurm(slurm_cluster, monkeypatch):
    """The cluster for one test: both nodes idle at the start, SLURM_CONF set so that the launcher's sbatch
    and the job's own srun, scontrol and scancel reach it; the test's jobs cancelled at its end."""
    slurm_cluster.wait_for_nodes_idle()
    for key, value in slurm_cluster.env.items():
        monkeypatch.setenv(key, value)
    yield slurm_cluster
    slurm_cluster.command("scancel", "--user=root", check=False)


def pytest_configure(config) -> None:
    # One intra-op thread in every process a test starts, through the environment: torchrun sets it only where a
    # node runs several ranks, and a node's single rank (SLURM job steps, two agents, the DeepSpeed runner's
    # hosts) took every core: two such ranks on 2 cores took 0.5 s a step instead of 0.1 s, spinning.
    os.environ["OMP_NUM_THREADS"] = "1"
    # Every core runs a pytest-xdist worker: torch's own intra-op threads on top oversubscribe the cores (40 tiny
    # training steps took 14 s with torch's default 2 threads, 2 s with 1, on 2 busy cores).
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session) -> None:
    """Collected: the garbage collector back on, what collection made frozen, as for a rank (weam_ds.startup)."""
    startup.finished()


# --- markers and pytest-xdist groups ------------------------------------------------------------------------------

SERVICES = {"slurm": "cluster", "slurm_cluster": "cluster", "ssh_hosts": "sshd"}
"""The fixtures of the real services and their xdist groups: the SLURM cluster (tests/slurm_cluster.py), one per
test run since it edits /etc/hosts and runs daemons on fixed names, so all its tests run in one worker, one by one;
sshd (tests/sshd_hosts.py, free ports on loopback aliases), whose test runs beside them."""
CLUSTER_FIXTURES = frozenset(SERVICES)
"""A test that uses one needs a real service: marked ``cluster``."""
SLOW_FIXTURES = CLUSTER_FIXTURES | {"trained_run"}
"""Fixtures that launch training or start services: a test that uses one is ``slow`` without saying so."""


@pytest.hookimpl(tryfirst=True)  # before pytest's -m selection and before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks ``cluster`` and ``slow`` where the fixtures a test uses tell (a test that launches training itself
    carries ``@pytest.mark.slow``), and gives --dist loadgroup its units of work: the cluster tests in one group;
    the tests sharing a module-scoped fixture in one group per module, so that the fixture is built once; a test
    with its own ``xdist_group`` mark in that group; every other test on its own. Units with more slow tests run
    first (the cluster first), so that no worker is left with a long unit at the end while the other idles."""
    units = {}
    for item in items:
        used = set(item.fixturenames)
        if used & CLUSTER_FIXTURES:
            item.add_marker(pytest.mark.cluster)
        if used & SLOW_FIXTURES or item.get_closest_marker("cluster"):
            item.add_marker(pytest.mark.slow)
        group = _xdist_group(item)
        if group and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(group))
        if group and getattr(item.config.option, "loadgroup", False) and hasattr(item, "_id"):
            # pytest-xdist 3.8 tells its scheduler the group by appending "@<group>" to the test's id through
            # item._nodeid, which pytest 9.2's structured ids ignore (pytest-xdist issue 1386): without this
            # every test is scheduled on its own, and two workers would each start a SLURM cluster.
            item._id = type(item._id).parse(f"{item.nodeid}@{group}")
        units[item] = group or item.nodeid
    slow = collections.Counter(units[item] for item in items if item.get_closest_marker("slow"))
    order = {item: index for index, item in enumerate(items)}
    items.sort(key=lambda item: (units[item] != "cluster", -slow[units[item]], order[item]))


def _xdist_group(item: pytest.Item) -> str | None:
    services = {SERVICES[name] for name in item.fixturenames if name in SERVICES}
    if services:
        return "cluster" if "cluster" in services else services.pop()
    if item.get_closest_marker("xdist_group"):  # the test's own: tests that must not run at the same time
        return item.get_closest_marker("xdist_group").args[0]
    definitions = getattr(item, "_fixtureinfo", None)
    scopes = {fixture.scope for defs in (definitions.name2fixturedefs.values() if definitions else ())
              for fixture in defs}
    return item.path.stem if scopes & {"module", "class"} else None  # test modules' names are unique (rootdir/tests)


SLOW_SECONDS = 5.0


def pytest_terminal_summary(terminalreporter) -> None:
    """Names the tests whose call took more than SLOW_SECONDS without the ``slow`` mark, so that a quick loop
    (-m "not slow") stays quick: mark them, or make them quicker."""
    unmarked = sorted((report.duration, report.nodeid) for reports in terminalreporter.stats.values()
                      for report in reports
                      if getattr(report, "when", None) == "call" and report.duration > SLOW_SECONDS
                      and "slow" not in report.keywords)
    if unmarked:
        terminalreporter.section(f"over {SLOW_SECONDS:.0f} s without @pytest.mark.slow")
        for seconds, nodeid in reversed(unmarked):
            terminalreporter.write_line(f"{seconds:6.1f}s {nodeid}")
