"""A job's own log (serving.batch.joblog): bounded, the outcome always written, never fatal."""

from __future__ import annotations

from serving.batch import joblog


def test_the_log_is_bounded_and_still_says_how_the_job_ended(tmp_path):
    path = joblog.job_log_path(tmp_path, "batchjob-1")
    for i in range(20_000):  # ~2.4 MB of failures
        joblog.append(path, f"mini-batch {i} (1 item(s): f{i:05d}.txt) failed, attempt 1 of 1: ValueError: x")
    size = path.stat().st_size
    assert joblog.LIMIT_BYTES - joblog.RESERVE_BYTES - 200 < size <= joblog.LIMIT_BYTES - joblog.RESERVE_BYTES + 200
    joblog.append(path, "Failed: 0 item(s) scored, 20000 failed, 0 not scored", final=True)
    text = path.read_text()
    assert text.count("log limit reached") == 1 and text.rstrip().endswith("20000 failed, 0 not scored")
    for _ in range(1000):  # even final lines stop at the hard limit
        joblog.append(path, "x" * 1000, final=True)
    assert path.stat().st_size <= joblog.LIMIT_BYTES
    assert joblog.read(tmp_path, "batchjob-1", workers=False) == path.read_text()


def test_a_log_that_cannot_be_written_is_skipped(tmp_path):
    (tmp_path / "batchjob-2").write_text("")  # the job's folder is taken by a file
    joblog.append(joblog.job_log_path(tmp_path, "batchjob-2"), "started")  # no exception
    assert joblog.read(tmp_path, "batchjob-2", workers=True) == ""
    assert joblog.read(tmp_path, "batchjob-none", workers=True) == ""


def test_worker_logs_follow_in_slot_order_their_tails_only(tmp_path):
    folder = joblog.job_log_path(tmp_path, "j").parent
    folder.mkdir(parents=True)
    joblog.append(folder / joblog.LOG_NAME, "started")
    (folder / "worker-10.log").write_text("ten\n")
    lines = "".join(f"line {i}\n" for i in range(100_000))  # 788,890 bytes
    (folder / "worker-2.log").write_text(lines)
    (folder / "notes.txt").write_text("not a worker log")
    text = joblog.read(tmp_path, "j", workers=True)
    assert text.index("started") < text.index("=== worker-2.log") < text.index("=== worker-10.log")
    assert "not a worker log" not in text and text.endswith("line 99999\n\n=== worker-10.log"
                                                             " (the scoring script's output) ===\nten\n")
    shown = text[text.index("=== worker-2.log"):text.index("\n\n=== worker-10.log")].split("\n", 2)
    assert shown[1].startswith("[... the first ") and shown[2].startswith("line ")  # whole lines only
    omitted = int(shown[1].split()[3])
    assert omitted + len(shown[2]) + 1 == len(lines) and len(shown[2]) <= joblog.WORKER_TAIL_BYTES


def test_a_rotated_worker_log_is_read_across_its_two_parts(tmp_path):
    folder = joblog.job_log_path(tmp_path, "j").parent
    folder.mkdir(parents=True)
    older = "".join(f"old {i}\n" for i in range(100_000))  # 688,890 bytes
    (folder / "worker-0.log.1").write_text(older)
    (folder / "worker-0.log").write_text("new 0\nnew 1\n")
    text = joblog.read(tmp_path, "j", workers=True)
    assert text.count("=== worker-0.log") == 1 and text.endswith("old 99999\nnew 0\nnew 1\n")
    shown = text.split("===\n", 1)[1]
    assert shown.startswith("[... the first ") and len(shown) < joblog.WORKER_TAIL_BYTES + 100
    (folder / "worker-0.log.1").unlink()
    assert joblog.read(tmp_path, "j", workers=True).endswith("===\nnew 0\nnew 1\n")
