"""pyshim.shim.colocate: which code objects a call records, and that functions given copies of
their code behave exactly as before."""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Callable, Iterator

import pytest

from pyshim.shim import colocate


def first() -> int:
    return second() + second()


def second() -> int:
    return 1


def never_called() -> int:
    return 3


def test_calls_during_records_each_called_function_once_in_first_call_order() -> None:
    codes = colocate.calls_during(lambda: first() + second())
    names = [code.co_name for code in codes]
    assert names[names.index("first"):] == ["first", "second"]
    assert "never_called" not in names


def test_calls_during_restores_the_previous_profile_function_also_on_error() -> None:
    def profiler(frame: types.FrameType, event: str, arg: object) -> None:
        pass

    def fail() -> None:
        raise RuntimeError("boom")

    sys.setprofile(profiler)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            colocate.calls_during(fail)
        assert sys.getprofile() is profiler
    finally:
        sys.setprofile(None)


def make_adder(step: int) -> Callable[[int], int]:
    def add(value: int) -> int:
        return value + step
    return add


class Counter:
    def __init__(self) -> None:
        self.count = 0

    def bump(self, by: int = 1) -> int:
        self.count += by
        return self.count


def numbers(limit: int) -> Iterator[int]:
    yield from range(limit)


async def answer() -> int:
    return 42


def test_relocate_gives_each_function_an_equal_copy_and_keeps_the_original() -> None:
    add_one, add_two = make_adder(1), make_adder(2)
    targets: list[Callable[..., object]] = [
        first, add_one, add_two, Counter.bump, numbers, answer]
    originals = [target.__code__ for target in targets]
    codes = list(dict.fromkeys(originals))  # the two adders share one code object

    assert colocate.relocate(codes) == len(codes) == 5

    for target, original in zip(targets, originals, strict=True):
        assert target.__code__ is not original
        assert target.__code__.co_code == original.co_code
        assert target.__code__.co_consts == original.co_consts
        assert target.__code__.co_qualname == original.co_qualname
        assert any(retired is original for retired in colocate._retired)
    assert add_one.__code__ is add_two.__code__  # still shared, now the copy
    assert (first(), add_one(1), add_two(1), Counter().bump(3), list(numbers(3))) == (
        2, 2, 3, 3, [0, 1, 2])
    assert inspect.iscoroutinefunction(answer) and inspect.isgeneratorfunction(numbers)
    coroutine = answer()
    with pytest.raises(StopIteration) as stop:
        coroutine.send(None)
    assert stop.value.value == 42


def test_relocate_leaves_code_that_no_function_holds() -> None:
    def outer() -> int:
        return sum(value * 2 for value in range(3))

    nested = [const for const in outer.__code__.co_consts if isinstance(const, types.CodeType)]
    assert nested  # the generator expression's code, made into a function at each call
    before = outer.__code__
    assert colocate.relocate([*nested, before]) == 1
    assert outer.__code__ is not before and outer() == 6
