"""`python -m datasets` under careless or hostile use: concurrent writers, SIGTERM and SIGKILL, a full or
read-only disk, failing generators, --data-seed and missing --out folders.

Every failure must be one line on stderr (status 2 if refused before writing, 1 if failed while
running, 130 if interrupted), and must leave neither a file under the output name, nor a temporary,
nor a lock file, nor a folder the run created.
"""

import ast
import collections
import errno
import fcntl
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import pytest

from datasets import power_allocation as pa
from datasets import resources, storage
from datasets.__main__ import main
from datasets.conflict_graphs import ConflictGraphDataset

ROOT = Path(__file__).resolve().parents[2]
PROG_PA = "python -m datasets power-allocation"
TINY_PA = ["power-allocation", "--pairs", "3", "--layouts", "2", "--batches-per-layout", "2",
           "--test-batches", "2", "--batch-size", "4"]
TINY_CG = ["conflict-graphs", "--vertices", "8", "--max-degree", "5", "--train-graphs", "3",
           "--test-graphs", "2", "--test-samples", "2"]

# A run of `python -m datasets` that stops in the middle of generation (its temporary file and its
# lock exist) and says so on stdout, so that a test can signal or kill it at that point.
STALLED_RUN = """
import sys, time
from datasets import power_allocation as pa
from datasets.__main__ import main

def stall(*args):
    print("generating", flush=True)
    time.sleep(60)

pa._channel_block = stall
sys.exit(main(sys.argv[1:]))
"""


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def one_line(text: str) -> str:
    assert text.count("\n") == 1 and text.endswith("\n") and "Traceback" not in text, text
    return text


@pytest.fixture
def stalled_run(tmp_path):
    """Start STALLED_RUN writing tmp_path/pa.h5; returns the process once it is generating."""
    processes = []

    def start():
        process = subprocess.Popen(
            [sys.executable, "-c", STALLED_RUN, *TINY_PA, "--out", str(tmp_path / "pa.h5"), "-q"],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        assert process.stdout.readline() == "generating\n", process.communicate(timeout=30)
        return process

    yield start
    for process in processes:  # only the processes this fixture started
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


# ---------------------------------------------------------------------------- 1. concurrent writers
def test_a_second_writer_is_refused_while_the_output_is_locked(tmp_path, capsys):
    out = tmp_path / "cg.h5"
    # flock locks belong to an open file description: this one conflicts with main's own open.
    holder = os.open(storage.lock_path(out), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(holder, b"4242\n")
        with pytest.raises(SystemExit) as exit_info:
            main([*TINY_CG, "--out", str(out)])
        assert exit_info.value.code == 2
        assert one_line(capsys.readouterr().err) == (
            f"python -m datasets conflict-graphs: error: {out} is being written by another process (pid 4242)\n"
        )
        assert names(tmp_path) == [".cg.h5.lock"]  # the holder's lock file only: nothing written
    finally:
        os.close(holder)  # releases the lock
    assert main([*TINY_CG, "--out", str(out), "-q"]) == 0
    assert names(tmp_path) == ["cg.h5"]  # the lock file goes with its last holder


def test_a_running_writer_excludes_others_and_a_killed_one_leaves_nothing_in_the_way(
    tmp_path, capsys, stalled_run
):
    out = tmp_path / "pa.h5"
    writer = stalled_run()
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY_PA, "--out", str(out), "--force"])
    assert exit_info.value.code == 2
    assert one_line(capsys.readouterr().err) == (
        f"{PROG_PA}: error: {out} is being written by another process (pid {writer.pid})\n"
    )
    writer.kill()  # SIGKILL: no cleanup runs, but the kernel drops the flock
    writer.wait(timeout=30)
    leftovers = names(tmp_path)
    assert ".pa.h5.lock" in leftovers and any(n.startswith(f".pa.h5.{writer.pid}.") for n in leftovers)
    assert main([*TINY_PA, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"removed {tmp_path}/.pa.h5.{writer.pid}." in err and "left by an interrupted run" in err
    assert names(tmp_path) == ["pa.h5"]


def test_claims_are_reentrant_per_thread_and_exclusive_between_threads(tmp_path):
    out = tmp_path / "x.h5"
    errors = []
    with storage.claim_output(out), storage.claim_output(out):  # nested: the CLI, then write_dataset
        thread = threading.Thread(target=lambda: errors.append(_try_claim(out)))
        thread.start()
        thread.join()
    assert errors == [f"{out} is being written by another thread of this process"]
    assert names(tmp_path) == []


def _try_claim(out):
    try:
        with storage.claim_output(out):
            return None
    except storage.OutputBusyError as exc:
        return str(exc)


# ---------------------------------------------------------------------------- 2. SIGTERM, stale temporaries
def test_sigterm_is_handled_as_ctrl_c(tmp_path, capsys, monkeypatch):
    before = signal.getsignal(signal.SIGTERM)

    def receive_sigterm(*args):  # what the kernel's delivery of SIGTERM runs in the main thread
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)

    monkeypatch.setattr(pa, "_channel_block", receive_sigterm)
    out = tmp_path / "pa.h5"
    assert main([*TINY_PA, "--out", str(out), "-q"]) == 130
    assert one_line(capsys.readouterr().err) == f"{PROG_PA}: interrupted by SIGTERM; nothing written to {out}\n"
    assert names(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is installed for the run only


def test_sigterm_to_a_real_run_removes_its_temporary(tmp_path, stalled_run):
    writer = stalled_run()
    assert any(n.endswith(".tmp") for n in names(tmp_path))
    writer.send_signal(signal.SIGTERM)
    stdout, stderr = writer.communicate(timeout=30)
    assert writer.returncode == 130
    assert one_line(stderr) == f"{PROG_PA}: interrupted by SIGTERM; nothing written to {tmp_path / 'pa.h5'}\n"
    assert names(tmp_path) == []


def test_only_stale_temporaries_of_the_same_output_are_removed(tmp_path, capsys):
    out = tmp_path / "cg.h5"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # its pid names a writer that is gone
    dead.wait()
    stale = tmp_path / f".cg.h5.{dead.pid}.0123abcd.tmp"
    alive = tmp_path / f".cg.h5.{os.getppid()}.0123abcd.tmp"  # a running writer that does not lock
    other = tmp_path / f".other.h5.{dead.pid}.0123abcd.tmp"
    for path in (stale, alive, other):
        path.write_bytes(b"partial")
    assert main([*TINY_CG, "--out", str(out)]) == 0
    assert f"removed {stale}, left by an interrupted run" in capsys.readouterr().err
    assert names(tmp_path) == sorted([alive.name, other.name, "cg.h5"])


# ---------------------------------------------------------------------------- 3. disk full, read-only
def test_refused_when_the_disk_is_too_full(tmp_path, capsys, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(resources.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 10**6, 10**6))
    out = tmp_path / "new" / "folder" / "pa.h5"
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY_PA, "--out", str(out)])
    assert exit_info.value.code == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"{PROG_PA}: error: the file {out} needs about ")
    assert f"MB of disk space in {out.parent} (file and margin), only 1 MB is free" in err
    assert names(tmp_path) == []  # the folders made for it are gone too


def _fail_creating(code):
    real = h5py.File

    def create(path, mode="r", **kwargs):
        if mode == "x":  # the temporary: leave a partial file behind, as a failing create might
            Path(path).write_bytes(b"\x89HDF partial")
            raise OSError(code, os.strerror(code), str(path))
        return real(path, mode, **kwargs)

    return create


def _fail_writing(code):
    def append(self, name, rows):  # the message of h5py's OSError, whose errno attribute is None
        raise OSError(f"Can't synchronously write data (file write failed: time = Mon Jan  1 00:00:00 2024\n, "
                      f"filename = 'x', file descriptor = 5, errno = {code}, error message = '{os.strerror(code)}')")

    return append


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("where", ["create", "append"])
def test_os_errors_while_writing_keep_the_old_file(tmp_path, capsys, monkeypatch, code, where):
    if where == "create":
        monkeypatch.setattr(h5py, "File", _fail_creating(code))
    else:
        monkeypatch.setattr(storage.DatasetWriter, "append", _fail_writing(code))
    out = tmp_path / "pa.h5"
    out.write_bytes(b"the previous dataset")
    assert main([*TINY_PA, "--out", str(out), "--force", "-q"]) == 1
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"{PROG_PA}: error while writing {out}: ") and err.endswith("; nothing written\n")
    assert err.endswith(f": {os.strerror(code)}; nothing written\n")
    assert names(tmp_path) == ["pa.h5"] and out.read_bytes() == b"the previous dataset"


def test_a_read_only_folder_fails_in_one_line(tmp_path, capsys, monkeypatch):
    def read_only(key, path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), key)

    monkeypatch.setattr(storage, "_lock", read_only)
    out = tmp_path / "new" / "pa.h5"
    assert main([*TINY_PA, "--out", str(out), "-q"]) == 1
    assert one_line(capsys.readouterr().err) == (
        f"{PROG_PA}: error while writing {out}: Read-only file system; nothing written\n"
    )
    assert names(tmp_path) == []


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (RuntimeError("boom\nsecond line"), "error while generating {out}: RuntimeError: boom second line; "
         "nothing written"),
        (ValueError("a bug, not a bad flag"), "error while generating {out}: ValueError: a bug, not a bad flag; "
         "nothing written"),
        (MemoryError(), "error: out of memory while generating {out}; nothing written (reduce the sizes)"),
    ],
)
def test_any_generator_failure_is_one_line_with_status_1(tmp_path, capsys, monkeypatch, error, message):
    def fail(*args):
        raise error

    monkeypatch.setattr(pa, "_channel_block", fail)
    out = tmp_path / "pa.h5"
    assert main([*TINY_PA, "--out", str(out), "-q"]) == 1
    assert one_line(capsys.readouterr().err) == f"{PROG_PA}: {message.format(out=out)}\n"
    assert names(tmp_path) == []


def test_huge_rows_are_chunked_below_the_hdf5_limit():
    chunks = storage._chunk_shape((3, 64, 10_000, 10_000), 1, 4)  # 25.6 GB per row
    assert chunks[0] == 1 and 4 * chunks[1] * chunks[2] * chunks[3] < 2**32
    assert storage._chunk_shape((300, 25, 25), 256, 8) == (256, 25, 25)  # ordinary rows: unchanged


# ---------------------------------------------------------------------------- 6. --data-seed
def test_data_seed_with_seed_as_alias(tmp_path, capsys):
    assert main([*TINY_CG, "--data-seed", "4", "--out", str(tmp_path / "a.h5"), "-q"]) == 0
    assert main([*TINY_CG, "--seed", "4", "--out", str(tmp_path / "b.h5"), "-q"]) == 0
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()
    with ConflictGraphDataset(tmp_path / "a.h5") as data:
        assert data.config["seed"] == 4
    with pytest.raises(SystemExit):
        main([*TINY_CG, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--data-seed SEED, --seed SEED seed of the data generator" in help_text


# ---------------------------------------------------------------------------- 7. --out folders
def test_missing_folders_of_out_are_created(tmp_path):
    out = tmp_path / "a" / "b" / "cg.h5"
    assert main([*TINY_CG, "--out", str(out), "-q"]) == 0
    assert names(out.parent) == ["cg.h5"]


def test_folders_created_for_a_failed_run_are_removed(tmp_path, capsys, monkeypatch):
    def fail(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pa, "_channel_block", fail)
    (tmp_path / "a").mkdir()  # exists already: stays
    assert main([*TINY_PA, "--out", str(tmp_path / "a" / "b" / "c" / "pa.h5"), "-q"]) == 1
    assert one_line(capsys.readouterr().err).endswith(": No space left on device; nothing written\n")
    assert names(tmp_path) == ["a"] and names(tmp_path / "a") == []


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("{tmp}", "--out: {tmp} is a folder, expected a file name"),
        ("{tmp}/file/x.h5", "--out: {tmp}/file is a file, not a folder"),
        ("{tmp}/file/deeper/x.h5", "--out: {tmp}/file is a file, not a folder"),
        ("{tmp}/pipe", "--out: {tmp}/pipe exists and is not a regular file"),  # --force must not replace it
        ("{tmp}/" + "x" * 250, "--out: the file name is too long (250 bytes; at most 233, leaving room for the "
         "hidden temporary file next to it)"),
    ],
)
def test_out_must_name_a_file_in_a_folder(tmp_path, capsys, out, message):
    (tmp_path / "file").write_text("a file")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY_CG, "--out", out.format(tmp=tmp_path), "--force"])
    assert exit_info.value.code == 2
    assert message.format(tmp=tmp_path) in one_line(capsys.readouterr().err)
    assert names(tmp_path) == ["file", "pipe"] and (tmp_path / "file").read_text() == "a file"


def test_help_into_a_closed_pipe_is_no_error():
    process = subprocess.Popen([sys.executable, "-m", "datasets", "power-allocation", "--help"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader has gone before the help is printed (`... --help | head -0`)
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=30) == 0 and stderr == ""


def test_negative_values_in_exponent_form_are_values_not_options(tmp_path):
    out = tmp_path / "negative.h5"
    assert main([*TINY_PA, "--noise-dbm", "-1.1e2", "--margin", "-5", "--snr-required", "-.5", "-q",
                 "--out", str(out)]) == 0
    with pa.PowerAllocationDataset(out) as data:
        config = data.parsed_config
    assert (config.noise_dbm, config.margin, config.snr_required) == (-110.0, -5.0, -0.5)


DAMAGED_HEADERS = """
import collections, contextlib, io, sys
from datasets.__main__ import main
original, damaged = open(sys.argv[1], "rb").read(), sys.argv[2]
statuses = collections.Counter()
for offset in range(len(original) - 800, len(original), 16):  # the root attributes lie at the end
    data = bytearray(original)
    data[offset] ^= 0xA5
    open(damaged, "wb").write(bytes(data))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(["info", damaged, "--verify"])
    assert err.getvalue().count("\\n") <= 1 and "Traceback" not in err.getvalue(), (offset, err.getvalue())
    statuses[status] += 1
print(dict(statuses))
"""


def test_a_damaged_attribute_header_is_one_line(tmp_path):
    # in a process of its own: HDF5 itself may crash on some damaged headers (not seen on these offsets)
    out = tmp_path / "a.h5"
    assert main([*TINY_PA, "-q", "--out", str(out)]) == 0
    result = subprocess.run([sys.executable, "-c", DAMAGED_HEADERS, str(out), str(tmp_path / "damaged.h5")],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    statuses = ast.literal_eval(result.stdout)  # {status: count}
    assert set(statuses) <= {0, 2} and statuses[2] > 0
