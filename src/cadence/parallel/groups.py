"""Which ranks train which expert, and the process groups that follow from it.

Plain data parallel: one group of every rank trains whatever the router names. Expert parallel (Wan 2.2
A14B with both experts trained, 2k ranks): ranks 0..k-1 train the first expert in model order
(high_noise), ranks k..2k-1 the second, each half its own data-parallel group; the first rank of each half
(its leader) is the one whose results and weights the other half receives after every round.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GroupPlan:
    world_size: int
    experts: tuple[str, ...]  # trained experts in model order
    members: dict[str | None, tuple[int, ...]]  # expert -> its ranks (None: one group of every rank)

    @property
    def expert_parallel(self) -> bool:
        return None not in self.members

    def expert_of(self, rank: int) -> str | None:
        """The expert `rank` trains (None: any expert the router names)."""
        for expert, ranks in self.members.items():
            if rank in ranks:
                return expert
        raise ValueError(f"rank {rank} is in no group of {self.members}")

    def leader(self, expert: str) -> int:
        return self.members[expert if self.expert_parallel else None][0]

    def group_of(self, rank: int) -> tuple[int, ...]:
        return self.members[self.expert_of(rank)]

    def describe(self) -> str:
        if not self.expert_parallel:
            return f"data parallel over {self.world_size} ranks"
        parts = [f"{expert} on ranks {list(ranks)}" for expert, ranks in self.members.items()]
        return "expert parallel: " + ", ".join(parts)


def plan_groups(world_size: int, experts: list[str], expert_parallel: bool) -> GroupPlan:
    """The group layout; ValueError naming the key when expert parallel cannot split this world."""
    if not expert_parallel:
        return GroupPlan(world_size, tuple(experts), {None: tuple(range(world_size))})
    if len(experts) < 2:
        raise ValueError(
            f"parallel.expert_parallel: this run trains {experts}; expert parallel needs both experts trained"
        )
    if world_size % len(experts):
        raise ValueError(
            f"parallel.expert_parallel: {world_size} processes cannot be split into {len(experts)} equal expert "
            f"groups; launch a multiple of {len(experts)} (torchrun --nproc_per_node)"
        )
    per = world_size // len(experts)
    members = {expert: tuple(range(i * per, (i + 1) * per)) for i, expert in enumerate(experts)}
    return GroupPlan(world_size, tuple(experts), members)
