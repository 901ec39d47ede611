"""Test-only: act at an exact compress block or fine-tune step inside a subprocess (``python -m sketchtune_cli``,
or the workers of torchrun / accelerate launch), without sleeps and without test code in the package.

A test puts this directory first on PYTHONPATH and sets
  SKETCHTUNE_TEST_HOOK="STAGE:DONE:ACTION"   e.g. "compress:1:signal:SIGUSR1", "finetune:4:kill"
  SKETCHTUNE_TEST_HOOK_RANK=N                 only the process with RANK N acts (default: every process)
  SKETCHTUNE_TEST_HOOK_PID=PID                signal this process instead of itself (e.g. a SLURM batch shell)
  SKETCHTUNE_TEST_HOOK_WAIT=1                 then wait until the signal, forwarded, reaches this process
ACTION ``signal:NAME`` sends the signal once ``DONE`` blocks/steps are finished (and checkpointed, for
compress); ``kill`` exits at once with code 99 like a killed process (no clean-up, no checkpoint of its own).
"""
import os

_SPEC = os.environ.get("SKETCHTUNE_TEST_HOOK")


def _install(spec: str) -> None:
    import signal

    from sketchtune_cli import preemption

    stage, done, action = spec.split(":", 2)
    rank = os.environ.get("SKETCHTUNE_TEST_HOOK_RANK")
    if rank is not None and os.environ.get("RANK", "0") != rank:
        return
    target = int(os.environ.get("SKETCHTUNE_TEST_HOOK_PID") or os.getpid())
    fired = []

    def hook(name: str, count: int) -> None:
        if name != stage or count != int(done) or fired:
            return
        fired.append(True)
        if action == "kill":
            os._exit(99)
        os.kill(target, getattr(signal, action.split(":", 1)[1]))
        if os.environ.get("SKETCHTUNE_TEST_HOOK_WAIT"):  # so the stop comes after exactly this block/step
            import time

            deadline = time.monotonic() + 120
            while preemption.current().signum is None and time.monotonic() < deadline:
                time.sleep(0.05)

    preemption.add_progress_hook(hook)


if _SPEC:
    _install(_SPEC)
