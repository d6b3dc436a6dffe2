from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# In a child process: the setting lasts for the rest of the process that makes it.
PROBE = """
import resource, torch
from gpt2.devices import keep_freed_memory

def faults_of_a_step():  # blocks like a training step's: mapped afresh by default
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones(n * 2**20 // 4) for n in (64, 16, 5, 1)]
    del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults_of_a_step()
default = faults_of_a_step()
applied = keep_freed_memory()
for _ in range(4):  # the heap grows to a step's peak, memalign's leftovers settle
    faults_of_a_step()
print(applied, default, faults_of_a_step())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="keep_freed_memory tunes glibc's malloc only")
def test_keep_freed_memory_stops_each_step_faulting_its_memory_in_again() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
    applied, default, kept = out[0] == "True", int(out[1]), int(out[2])
    assert applied
    assert default >= 80 * 2**20 // 4096  # by default every block's pages are faulted in again, every step
    assert kept < 100  # kept: a step reuses the memory of the steps before it
