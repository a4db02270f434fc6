"""Request ids the gateway makes: random version 4 UUIDs, unique, distinct between processes."""

import multiprocessing
import uuid

from router.context import request_id_from


def _ids_in_child(queue) -> None:
    queue.put([request_id_from(None) for _ in range(3)])


def test_made_ids_are_unique_version_4_uuids():
    made = [request_id_from(None) for _ in range(20000)]
    assert len(set(made)) == len(made)
    for value in made[:50] + made[-50:]:
        parsed = uuid.UUID(value)
        assert str(parsed) == value and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_made_ids_say_nothing_about_how_many_requests_came_between():
    """The ids were a process prefix and a counter: two of a caller's answers told it how
    many requests the gateway had served in between (e.g. ...600000000008, then ...009)."""
    made = [request_id_from(None) for _ in range(1000)]
    assert len({value[:8] for value in made}) > 990  # no shared prefix: every part is drawn
    tails = [int(value[-12:], 16) for value in made]
    assert sum(1 for a, b in zip(tails, tails[1:]) if 0 < b - a < 1000) < 5  # no counting tail


def test_a_forked_process_draws_its_own_random_part():
    mine = request_id_from(None)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_ids_in_child, args=(queue,))
    child.start()
    theirs = queue.get(timeout=30)
    child.join(timeout=30)
    assert all(t[:24] != mine[:24] for t in theirs)  # not the parent's prefix


def test_a_plain_caller_id_is_kept_and_a_hostile_one_replaced():
    assert request_id_from("abc-123:x.y") == "abc-123:x.y"
    for hostile in ("", "a" * 129, "bad id", "x\r\ny", "-leading", "é", "0\n", "abc\n"):
        assert uuid.UUID(request_id_from(hostile)).version == 4
