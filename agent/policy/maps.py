"""Writing a policy into the kernel's maps (agent/bpf/policy.h, records in kprobe.h) through the fds the loader
handed over. Two slots: a new policy is written into the slot not in force, then one write of the state flips
`active`, so no deletion ever sees half of a policy; the old slot is cleared on the next load.

A check under way at the flip keeps deciding with the slot it started with (agent/bpf/enforce.h). So before a
slot is used again, its generation is cleared (a check still in it sees the change), and that happens no sooner
than RETIRE_S after the flip that took it out of force: far longer than any check, which never sleeps."""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field

from ..decode import C
from ..probe import bpfsys
from .image import KernelImage, name_heads

WORDS = C["UW_POLICY_WORDS"]
RULES = C["UW_POLICY_RULES"]
KEY_BYTES = C["UW_POLICY_KEY"]
DIRS = C["UW_POLICY_DIRS"]
DIR_MARK = bytes([C["UW_POLICY_DIR_MARK"]])
COMM_LEN = C["UW_COMM_LEN"]
_RS = struct.Struct(f"<{WORDS}Q")
_SLOT = struct.Struct(f"<IIII{WORDS * 7}Q")  # nrules, gen, uses, pad, unknown, ops[4], ignore, block
_STATE_HEAD = struct.Struct("<II")  # active, pad
_KEY = struct.Struct(f"<IB{KEY_BYTES}s")
_COMM = struct.Struct(f"<B{COMM_LEN}s")
_CGROUP = struct.Struct("<Q")
HEAD_WORDS = C["UW_NAME_HEAD_WORDS"]
_HEADS = struct.Struct(f"<II{HEAD_WORDS}Q")  # len, pad, the filter's words
RETIRE_S = 0.05  # a slot taken out of force is reused no sooner than this (the agent reloads at most once a second)
MAP_NAMES = ("policy_state", "policy_paths", "policy_names", "policy_name_heads", "policy_exes", "policy_comms",
             "policy_cgroups", "policy_filtered")
_SIZES = {"policy_state": (4, _STATE_HEAD.size + 2 * _SLOT.size), "policy_paths": (_KEY.size, _RS.size),
          "policy_names": (_KEY.size, _RS.size), "policy_name_heads": (4, _HEADS.size),
          "policy_exes": (_KEY.size, _RS.size), "policy_comms": (_COMM.size, _RS.size),
          "policy_cgroups": (_CGROUP.size, 2 * _RS.size), "policy_filtered": (4, 8)}


def words(mask: int) -> list[int]:
    return [(mask >> (64 * i)) & 0xFFFFFFFFFFFFFFFF for i in range(WORDS)]


def rule_set(mask: int) -> bytes:
    return _RS.pack(*words(mask))


def lpm_key(slot: int, data: bytes) -> bytes:
    return _KEY.pack(8 + 8 * len(data), slot, data)


def comm_key(slot: int, comm: bytes) -> bytes:
    return _COMM.pack(slot, comm)


def heads_value(names: dict[bytes, int]) -> bytes:
    """policy_name_heads' value for a slot whose policy_names holds these keys."""
    n, bits = name_heads(names)
    return _HEADS.pack(n, 0, *((bits >> (64 * i)) & 0xFFFFFFFFFFFFFFFF for i in range(HEAD_WORDS)))


def slot_value(image: KernelImage | None, gen: int) -> bytes:
    if image is None:
        return _SLOT.pack(0, 0, 0, 0, *([0] * (WORDS * 7)))
    sets = [image.unknown, 0, image.ops.get(1, 0), image.ops.get(2, 0), image.ops.get(3, 0), image.ignore,
            image.block]
    return _SLOT.pack(image.nrules, gen, image.uses, 0, *(w for m in sets for w in words(m)))


class PolicyMapsError(Exception):
    """The loaded program's maps are not the ones this agent writes (a build mismatch)."""


@dataclass
class _Written:
    """The keys one slot holds, to clear them before the slot is used again."""

    paths: list[bytes] = field(default_factory=list)
    names: list[bytes] = field(default_factory=list)
    exes: list[bytes] = field(default_factory=list)
    comms: list[bytes] = field(default_factory=list)


class PolicyMaps:
    def __init__(self, fds: dict[str, int]) -> None:
        try:
            self.fd = {name: fds[f"map:{name}"] for name in MAP_NAMES}
        except KeyError as e:
            raise PolicyMapsError(f"the loaded program has no policy map {e}") from None
        for name, (key_size, value_size) in _SIZES.items():
            info = bpfsys.map_info(self.fd[name])
            if (info.key_size, info.value_size) != (key_size, value_size):
                raise PolicyMapsError(f"map {name}: key/value {info.key_size}/{info.value_size} bytes, "
                                      f"expected {key_size}/{value_size} (kprobe.h and agent/policy/maps.py)")
        self.active = 0
        self.gen = 0
        self._slots = [_SlotState(), _SlotState()]
        self._cgroups: dict[int, list[int]] = {}  # cgroup id -> mask per slot
        self._ncpu = bpfsys.possible_cpus()
        self._flipped_at = float("-inf")

    def load(self, image: KernelImage, cgroups: dict[int, int]) -> tuple[int, int]:
        """Writes `image` (and each cgroup's rules under it) into the slot not in force, then puts it in force.
        Returns (slot, generation)."""
        new = 1 - self.active
        self._retire(new)
        self._clear_slot(new)
        w = self._slots[new].written = _Written()
        for data, mask in image.paths.items():
            w.paths.append(self._put("policy_paths", lpm_key(new, data), rule_set(mask)))
        for d in image.dirs:
            if len(d) < KEY_BYTES:  # longer ones are never decided in the kernel
                w.paths.append(self._put("policy_paths", lpm_key(new | DIRS, d + DIR_MARK), rule_set(1)))
        for data, mask in image.names.items():
            w.names.append(self._put("policy_names", lpm_key(new, data), rule_set(mask)))
        bpfsys.update(self.fd["policy_name_heads"], struct.pack("<I", new), heads_value(image.names))
        for data, mask in image.exes.items():
            w.exes.append(self._put("policy_exes", lpm_key(new, data), rule_set(mask)))
        for comm, mask in image.comms.items():
            w.comms.append(self._put("policy_comms", comm_key(new, comm), rule_set(mask)))
        for cgid in set(self._cgroups) | set(cgroups):
            masks = self._cgroups.setdefault(cgid, [0, 0])
            masks[new] = cgroups.get(cgid, 0)
            self._write_cgroup(cgid)
        self.gen += 1
        slots = [b"", b""]
        slots[self.active] = self._slots[self.active].value
        slots[new] = self._slots[new].value = slot_value(image, self.gen)
        # first the new slot with the old one still in force, then the flip: each write leaves a whole policy
        self._write_state(self.active, slots)
        self._write_state(new, slots)
        self._flipped_at = time.monotonic()
        self.active = new
        return new, self.gen

    def set_cgroup(self, cgid: int, mask: int) -> None:
        """The rules for one cgroup under the policy in force."""
        masks = self._cgroups.get(cgid)
        if masks is None:  # written even when no rule applies: a cgroup without an entry gets the unknown's rules
            masks = self._cgroups[cgid] = [0, 0]
        elif masks[self.active] == mask:
            return
        masks[self.active] = mask
        self._write_cgroup(cgid)

    def forget_cgroup(self, cgid: int) -> None:
        if self._cgroups.pop(cgid, None) is not None:
            bpfsys.delete(self.fd["policy_cgroups"], _CGROUP.pack(cgid))

    def cgroup_ids(self) -> list[int]:
        return list(self._cgroups)

    def filtered(self, slot: int, rules: list[int]) -> list[int]:
        """Deletions dropped by each of these (ignore) rules of a slot, summed over CPUs."""
        out = []
        for i in rules:
            raw = bpfsys.lookup(self.fd["policy_filtered"], struct.pack("<I", slot * RULES + i), 8 * self._ncpu)
            out.append(sum(struct.unpack(f"<{self._ncpu}Q", raw)))
        return out

    def zero_filtered(self, slot: int, rules: list[int]) -> None:
        zero = bytes(8 * self._ncpu)
        for i in rules:
            bpfsys.update(self.fd["policy_filtered"], struct.pack("<I", slot * RULES + i), zero)

    def _put(self, name: str, key: bytes, value: bytes) -> bytes:
        bpfsys.update(self.fd[name], key, value)
        return key

    def _write_cgroup(self, cgid: int) -> None:
        masks = self._cgroups[cgid]
        bpfsys.update(self.fd["policy_cgroups"], _CGROUP.pack(cgid), rule_set(masks[0]) + rule_set(masks[1]))

    def _write_state(self, active: int, slots: list[bytes]) -> None:
        bpfsys.update(self.fd["policy_state"], struct.pack("<I", 0), _STATE_HEAD.pack(active, 0) + slots[0] + slots[1])

    def _retire(self, slot: int) -> None:
        """Before `slot`'s maps are cleared and rewritten: RETIRE_S after the flip that took it out of force, its
        generation goes to 0, so that a check still deciding with it allows rather than read half a policy."""
        wait = self._flipped_at + RETIRE_S - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        slots = [self._slots[0].value, self._slots[1].value]
        slots[slot] = self._slots[slot].value = slot_value(None, 0)
        self._write_state(self.active, slots)

    def _clear_slot(self, slot: int) -> None:
        w = self._slots[slot].written
        for name, keys in (("policy_paths", w.paths), ("policy_names", w.names), ("policy_exes", w.exes),
                           ("policy_comms", w.comms)):
            for key in keys:
                bpfsys.delete(self.fd[name], key)
        self._slots[slot].written = _Written()


@dataclass
class _SlotState:
    written: _Written = field(default_factory=_Written)
    value: bytes = field(default_factory=lambda: slot_value(None, 0))
