"""What machine a figure was measured on: the CPU's name, cores and vector extensions, and jax's.

Timings and even the demo's mIoU table depend on the CPU: XLA:CPU generates code for the vector
extensions it finds (AVX-512 or AVX2), which changes its speed (the same demo ran 2.4x slower on
an AVX2-only 2-core AMD EPYC than on the earlier rounds' machine, whose CPU nobody recorded) and
the order of its float sums. So summary.json and every bench/ JSON line carry this description.
"""

import os
import platform
import sys

# The vector extensions that change XLA:CPU's code (kernels, widths, fused multiply-adds).
VECTOR_FLAGS = ('avx512f', 'avx512_bf16', 'avx512_vnni', 'amx_tile', 'avx2', 'fma', 'sve', 'neon',
                'asimd')


def _first_value(cpuinfo, keys):
  """The value of the first line of `cpuinfo` whose key is one of `keys` (None: none or no file)."""
  try:
    with open(cpuinfo) as f:
      for line in f:
        key, _, value = line.partition(':')
        if key.strip() in keys and value.strip():
          return value.strip()
  except OSError:
    pass
  return None


def cpu_name(cpuinfo='/proc/cpuinfo'):
  """The CPU's marketing name ('model name' on x86, else the platform's processor string)."""
  return (_first_value(cpuinfo, ('model name', 'Model', 'Hardware')) or platform.processor()
          or platform.machine())


def vector_flags(cpuinfo='/proc/cpuinfo'):
  """Those of VECTOR_FLAGS the first CPU lists, in VECTOR_FLAGS' order ([] when unknown)."""
  have = set((_first_value(cpuinfo, ('flags', 'Features')) or '').split())
  return [flag for flag in VECTOR_FLAGS if flag in have]


def cores():
  """The cores this process may run on (its affinity, which a container or taskset narrows)."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


def describe():
  """{'cpu', 'cores', 'vector', 'jax', 'backend', 'device'}: jax's entries only where the caller
  has imported jax (a CRF worker or a bench parent process describes the host without it)."""
  out = dict(cpu=cpu_name(), cores=cores(), vector=vector_flags())
  jax = sys.modules.get('jax')
  if jax is not None:
    out.update(jax=jax.__version__, backend=jax.default_backend(),
               device=jax.devices()[0].device_kind)
  return out


def one_line(info):
  """'AMD EPYC (2 cores, avx2 fma), jax 0.10.2 cpu': for logs and tables."""
  text = f"{info['cpu']} ({info['cores']} cores"
  text += f", {' '.join(info['vector'])})" if info.get('vector') else ')'
  if 'jax' in info:
    text += f", jax {info['jax']} {info['backend']}"
  return text
