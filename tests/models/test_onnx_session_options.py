"""ONNX Runtime session options of served bundles: the CPU memory arena and spin-waiting are off unless asked for."""

from __future__ import annotations

from models.onnx_backend import session_options


def test_cpu_memory_arena_is_off_by_default(monkeypatch):
    monkeypatch.delenv("PCCLIP_ORT_CPU_ARENA", raising=False)
    assert session_options().enable_cpu_mem_arena is False


def test_cpu_memory_arena_can_be_turned_on(monkeypatch):
    monkeypatch.setenv("PCCLIP_ORT_CPU_ARENA", "1")
    assert session_options().enable_cpu_mem_arena is True
    monkeypatch.setenv("PCCLIP_ORT_CPU_ARENA", "1")
    assert session_options(cpu_mem_arena=False).enable_cpu_mem_arena is False


def test_intra_op_threads_do_not_spin_by_default(monkeypatch):
    monkeypatch.delenv("PCCLIP_ORT_SPINNING", raising=False)
    assert session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_spinning_can_be_turned_on(monkeypatch):
    monkeypatch.setenv("PCCLIP_ORT_SPINNING", "1")
    assert session_options().get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert session_options(allow_spinning=False).get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_the_image_towers_session_has_the_arena_unless_it_is_turned_off(monkeypatch):
    monkeypatch.delenv("PCCLIP_ORT_CPU_ARENA", raising=False)
    assert session_options(arena_by_default=True).enable_cpu_mem_arena is True
    monkeypatch.setenv("PCCLIP_ORT_CPU_ARENA", "0")
    assert session_options(arena_by_default=True).enable_cpu_mem_arena is False
