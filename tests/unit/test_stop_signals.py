"""One stop mechanism (launcher/signals.py): the supervisor records the stop signals it holds and
asks the ranks through RUN_DIR/stop-request.json, which rank 0 adopts at a step boundary."""
import signal

import pytest

from llmlaunch.launcher.signals import (STOP_SIGNALS, StopNow, StopRequest, StopSignals,
                                        clear_stop_request, read_stop_request, request_stop)


@pytest.fixture
def held():
    """The stop signals blocked, as the supervisor's first line leaves them; restored after."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def test_a_signal_held_since_the_first_line_is_delivered_when_the_handlers_come(held):
    # raise_signal is directed at this thread: os.kill's process-directed signal may go to another
    # thread (torch's, in a long test session) that does not hold it, and end the process
    signal.raise_signal(signal.SIGUSR1)            # while held: pending, not fatal, not lost
    signals = StopSignals(environ={}).install()
    signal.raise_signal(signal.SIGINT)
    assert signals.received == ["SIGUSR1", "SIGINT"] and signals.first == "SIGUSR1"
    assert signals.interrupts == 1


def test_a_signal_inside_an_in_process_phase_abandons_it(held):
    signals = StopSignals(environ={}).install()
    with pytest.raises(StopNow):
        with signals.interruptible():
            signal.raise_signal(signal.SIGTERM)
            pytest.fail("the phase went on after the signal")
    assert signals.received == ["SIGTERM"]
    with pytest.raises(StopNow):                   # one that came before: abandoned at once
        with signals.interruptible():
            pytest.fail("the phase started after a stop")


def test_old_sbatch_files_hand_over_a_signal_their_bash_caught():
    assert StopSignals(environ={"LLMLAUNCH_EARLY_STOP": "USR1"}).received == ["SIGUSR1"]
    assert StopSignals(environ={"LLMLAUNCH_EARLY_STOP": ""}).received == []


def test_the_stop_request_reaches_rank_0_at_a_step_boundary(tmp_path):
    rank0 = StopRequest()
    assert not rank0.take_request(tmp_path) and read_stop_request(tmp_path) is None
    request_stop(tmp_path, "SIGUSR1", "batch signal")
    assert rank0.take_request(tmp_path) and rank0.signal_name == "SIGUSR1"
    (tmp_path / "stop-request.json").write_text('{"sig')          # torn: still a request
    late = StopRequest()
    assert late.take_request(tmp_path) and late.signal_name == "a stop request"
    clear_stop_request(tmp_path)
    assert read_stop_request(tmp_path) is None and not StopRequest().take_request(tmp_path)
