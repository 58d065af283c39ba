"""host_info: the machine a figure was measured on, read from /proc/cpuinfo's two layouts."""

from recurseed_jax import host_info

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx fma avx2 avx512f bmi2

processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx fma avx2
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes sve
CPU implementer\t: 0x41
"""


def test_x86_name_and_the_first_cpus_vector_flags_in_a_fixed_order(tmp_path):
  path = tmp_path / 'cpuinfo'
  path.write_text(X86)
  assert host_info.cpu_name(str(path)) == 'AMD EPYC 7B13'
  assert host_info.vector_flags(str(path)) == ['avx512f', 'avx2', 'fma']


def test_arm_features_and_a_missing_file(tmp_path):
  path = tmp_path / 'cpuinfo'
  path.write_text(ARM)
  assert host_info.vector_flags(str(path)) == ['sve', 'asimd']
  assert host_info.cpu_name(str(path))  # no model name: the platform's string, never empty
  assert host_info.vector_flags(str(tmp_path / 'absent')) == []


def test_describe_and_its_line():
  import jax  # noqa: F401  (imported: describe adds jax's entries)
  info = host_info.describe()
  assert info['cores'] >= 1 and info['jax'] and info['backend'] == 'cpu'
  line = host_info.one_line(dict(cpu='X', cores=2, vector=['avx2', 'fma'], jax='0.1',
                                 backend='cpu'))
  assert line == 'X (2 cores, avx2 fma), jax 0.1 cpu'
  assert host_info.one_line(dict(cpu='X', cores=1, vector=[])) == 'X (1 cores)'
