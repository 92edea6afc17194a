"""Domain errors and the gRPC statuses the server reports them with (server/status.py)."""

from __future__ import annotations

import importlib
import pkgutil
from types import SimpleNamespace

import grpc
import pytest

import crio_fast
from crio_fast import errors
from crio_fast.cgroups.errors import CgroupError, CgroupValidationError
from crio_fast.errors import CrioError
from crio_fast.network.cni import CniError
from crio_fast.server import base
from crio_fast.server.status import STATUS_OF_ERROR, status_of, status_of_class


def _import_every_module() -> None:
    """Error classes exist once their module is imported; ``__main__`` would run the CLI."""
    for module in pkgutil.walk_packages(crio_fast.__path__, "crio_fast."):
        if module.name.rpartition(".")[2] != "__main__":
            importlib.import_module(module.name)


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


def _categories(error_class: type[CrioError]) -> set[grpc.StatusCode]:
    """Statuses of the table's classes above ``error_class``, the catch-all CrioError aside."""
    return {STATUS_OF_ERROR[c] for c in error_class.__mro__[1:] if c in STATUS_OF_ERROR and c is not CrioError}


def test_every_domain_error_has_a_status_of_its_own():
    _import_every_module()
    kinds = {cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, CrioError)}
    for cls in kinds:
        assert cls in STATUS_OF_ERROR, f"crio_fast.errors.{cls.__name__} has no gRPC status in server/status.py"
    for cls in _subclasses(CrioError) - kinds:
        name = f"{cls.__module__}.{cls.__qualname__}"
        if cls in STATUS_OF_ERROR:
            continue
        categories = _categories(cls)
        # Only CrioError above it: its status would be UNKNOWN by default, not by choice.
        assert categories, f"{name} derives from no kind of error in crio_fast.errors and has no status"
        # Kinds with different statuses above it: base order would decide; the table must.
        assert len(categories) == 1, f"{name} is {sorted(c.name for c in categories)} at once; give it a status"


@pytest.mark.parametrize(("error_class", "status"), [
    (CrioError, grpc.StatusCode.UNKNOWN),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Internal, grpc.StatusCode.INTERNAL),
    (CgroupError, grpc.StatusCode.INTERNAL),
    (CgroupValidationError, grpc.StatusCode.INVALID_ARGUMENT),
    (CniError, grpc.StatusCode.UNKNOWN),
    (errors.CriReason, grpc.StatusCode.UNKNOWN),
    (errors.UnreachableRegistry, grpc.StatusCode.UNKNOWN),
])
def test_status_of_each_error(error_class: type[CrioError], status: grpc.StatusCode):
    assert status_of_class(error_class) == status


def test_a_subclass_takes_its_kinds_status():
    class LayerMissing(errors.NotFound):
        pass

    assert status_of(LayerMissing("layer sha256:1 not found")) == grpc.StatusCode.NOT_FOUND


def test_status_of_class_refuses_other_exceptions():
    with pytest.raises(TypeError):
        status_of_class(ValueError)  # type: ignore[arg-type]


class _Aborted(Exception):
    pass


class _Context:
    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise _Aborted


@pytest.mark.parametrize(("error", "status"), [
    (CgroupValidationError("swap limit below the memory limit"), grpc.StatusCode.INVALID_ARGUMENT),
    (CgroupError("rmdir /sys/fs/cgroup/x: Device or resource busy"), grpc.StatusCode.INTERNAL),
    (CniError("CNI plugin bridge (ADD) failed"), grpc.StatusCode.UNKNOWN),
    (errors.NotFound("container 'nope' not found"), grpc.StatusCode.NOT_FOUND),
])
def test_a_handler_aborts_with_the_errors_status_and_message(error: CrioError, status: grpc.StatusCode):
    def fail(self, request, context):
        raise error

    handler = base._wrap_unary("RuntimeService", "ContainerStatus", fail, on_loop=False)
    context = _Context()
    with pytest.raises(_Aborted):
        handler(SimpleNamespace(), None, context)
    assert (context.code, context.details) == (status, str(error))


@pytest.mark.parametrize("error", [errors.InvalidArgument("hostname " + "x" * (1 << 20) + " is too long"),
                                   ValueError("é" * (1 << 20))], ids=["domain error", "bug"])
def test_a_huge_message_is_cut_to_fit_the_status(error: Exception):
    """Past gRPC's metadata limit the client would see RESOURCE_EXHAUSTED instead of the error."""
    def fail(self, request, context):
        raise error

    handler = base._wrap_unary("RuntimeService", "RunPodSandbox", fail, on_loop=False)
    context = _Context()
    with pytest.raises(_Aborted):
        handler(SimpleNamespace(), None, context)
    assert len(context.details.encode()) <= errors.STATUS_MESSAGE_LIMIT + 40
    assert context.details.endswith("more bytes)")


def test_cut_keeps_short_text_and_whole_characters():
    assert errors.cut("short") == "short"
    assert errors.cut("a" * 300) == "a" * 256 + "... (44 more bytes)"
    cut = errors.cut("é" * 200, 255)  # two bytes each: the character across the limit is left out whole
    assert cut == "é" * 127 + "... (146 more bytes)"
    assert errors.shown("x\0y") == "'x\\x00y'"
    assert len(errors.shown("z" * 10_000)) < 300
