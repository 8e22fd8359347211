"""tether._kernel.record: a frozen record behaves as the ``@dataclass(frozen=True,
slots=True)`` it replaced, checked side by side against a real dataclass of the same shape."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

import tether
from tether._kernel.exit import Exit
from tether._kernel.record import frozen_record, replace


@frozen_record
class Point:
    x: int
    y: int = 0
    label: str | None = None

    def __post_init__(self) -> None:
        if self.x < 0:
            raise ValueError("x must be >= 0")


@dataclasses.dataclass(frozen=True, slots=True)
class DataPoint:
    x: int
    y: int = 0
    label: str | None = None


def test_made_by_position_or_keyword_with_the_class_body_defaults() -> None:
    for args, kwargs in [((1,), {}), ((1, 2), {"label": "a"}), ((), {"x": 3, "y": 4})]:
        record, data = Point(*args, **kwargs), DataPoint(*args, **kwargs)
        assert (record.x, record.y, record.label) == (data.x, data.y, data.label)


@pytest.mark.parametrize(("args", "kwargs"), [
    ((), {}), ((1, 2, "a", 4), {}), ((1,), {"x": 1}), ((1,), {"z": 1}),
], ids=["missing", "too many", "twice", "unknown"])
def test_bad_arguments_are_a_type_error_as_for_a_dataclass(args: tuple[object, ...],
                                                           kwargs: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        DataPoint(*args, **kwargs)  # type: ignore[arg-type, misc, call-arg]
    with pytest.raises(TypeError):
        Point(*args, **kwargs)  # type: ignore[arg-type, misc, call-arg]


def test_every_field_by_position_is_the_same_record_as_by_keyword() -> None:
    # (the start path's own way in: every field given by position, set slot by slot)
    assert Point(1, 2, "a") == Point(x=1, y=2, label="a") == Point(1, label="a", y=2)
    assert repr(Point(1, 2, "a")) == repr(DataPoint(1, 2, "a")).replace("DataPoint", "Point")


def test_a_subclass_post_init_runs_as_for_a_dataclass() -> None:
    # dataclasses call self.__post_init__: a subclass's override runs, by position or keyword
    # (so a subclass of a public record, say tether.Limits, keeps its own checks).
    @dataclasses.dataclass(frozen=True, slots=True)
    class DataBase:
        x: int
        y: int = 0

        def __post_init__(self) -> None:
            pass

    @frozen_record
    class Base:
        x: int
        y: int = 0

        def __post_init__(self) -> None:
            pass

    class DataChecked(DataBase):
        __slots__ = ()

        def __post_init__(self) -> None:
            raise ValueError("the subclass checked it")

    class Checked(Base):
        __slots__ = ()

        def __post_init__(self) -> None:
            raise ValueError("the subclass checked it")

    for args, kwargs in [((1, 2), {}), ((1,), {}), ((), {"x": 1, "y": 2})]:
        with pytest.raises(ValueError, match="the subclass"):
            DataChecked(*args, **kwargs)
        with pytest.raises(ValueError, match="the subclass"):
            Checked(*args, **kwargs)


def test_a_static_post_init_is_called_without_the_record() -> None:
    # (as dataclasses' self.__post_init__() calls it; the by-position path too)
    seen: list[str] = []

    @frozen_record
    class Noted:
        x: int

        @staticmethod
        def __post_init__() -> None:
            seen.append("noted")

    Noted(1)
    Noted(x=1)
    assert seen == ["noted", "noted"]


def test_post_init_checks_every_making() -> None:
    with pytest.raises(ValueError, match="x must be"):
        Point(-1)
    with pytest.raises(ValueError, match="x must be"):
        Point(-1, 0, None)  # every field by position
    with pytest.raises(ValueError, match="x must be"):
        replace(Point(1), x=-1)


def test_frozen_and_slotted() -> None:
    record = Point(1)
    with pytest.raises(AttributeError):
        record.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del record.x  # type: ignore[misc]
    with pytest.raises(AttributeError):
        record.other = 1  # type: ignore[attr-defined]
    assert not hasattr(record, "__dict__")
    assert Point.__slots__ == DataPoint.__slots__ == ("x", "y", "label")
    assert Point.__match_args__ == DataPoint.__match_args__


def test_equal_and_hashed_by_fields_and_class() -> None:
    assert Point(1, 2) == Point(1, 2) and hash(Point(1, 2)) == hash(Point(1, 2))
    assert Point(1, 2) != Point(1, 3)
    assert Point(1, 2) != DataPoint(1, 2)
    assert len({Point(1), Point(1), Point(2)}) == 2


def test_repr_is_the_dataclass_one() -> None:
    assert repr(Point(1, label="a")) == repr(DataPoint(1, label="a")).replace("DataPoint", "Point")


def test_replace_makes_a_changed_copy_and_names_an_unknown_field() -> None:
    record = Point(1, 2)
    assert replace(record, y=5) == Point(1, 5)
    assert record == Point(1, 2)
    with pytest.raises(TypeError, match="'z'"):
        replace(record, z=1)


def test_pickle_and_copy_make_it_again() -> None:
    exit_ = Exit(code=None, signal=9, core_dumped=True)
    assert pickle.loads(pickle.dumps(exit_)) == exit_
    assert copy.copy(exit_) == exit_ and copy.deepcopy(exit_) == exit_
    limits = tether.Limits(memory=1 << 20, pids=8)
    assert pickle.loads(pickle.dumps(limits)) == limits


def test_a_metaclass_is_refused() -> None:
    class Meta(type):
        pass

    with pytest.raises(TypeError, match="metaclass"):
        frozen_record(Meta("Odd", (), {"__annotations__": {"a": "int"}}))
