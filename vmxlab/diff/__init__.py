"""Differential testing of the software CPU against the real CPU (issue 2, "Checked against real hardware").

The same program -- a short sequence of 32-bit integer instructions with an initial register,
flag and memory state -- runs on vmxlab's software CPU at CPL 3 in 32-bit protected mode and on
the host CPU at CPL 3; registers, EFLAGS, two data pages and the first fault (vector, error
code, faulting instruction, CR2) are compared.

* :mod:`.layout`        the shared address map and page permissions
* :mod:`.program`       instructions, initial state, encodings (32-bit, and 64-bit with the same meaning)
* :mod:`.gen`           the instruction-form catalogue (from iced's opcode tables and the CPU's FACTORIES)
                        and the random program generator (hypothesis or random.Random)
* :mod:`.cases`         hand-written edge cases
* :mod:`.kvm_target`    the host CPU through /dev/kvm (64-bit ring 3: why, and what was measured)
* :mod:`.native_target` the host CPU running 32-bit code in compatibility mode, in a worker process
* :mod:`.emu_target`    the software CPU
* :mod:`.compare`       the comparison and the undefined-flag masks
* :mod:`.known`         divergences found and reported, not fixed yet

``python -m vmxlab.diff`` runs many random programs outside pytest and prints a summary
(tests/test_differential.py is the CI check).
"""
