#!/usr/bin/env bash
# Builds lpmp_gaec_driver: LPMP's asymmetric multiway cut GAEC (the solver the original COPS code
# calls) from an unmodified LPMP checkout, for side-by-side runs with
# `tools/benchmark.py solver --lpmp <driver>`. Nothing of LPMP is part of this repository.
#
#   git clone https://github.com/LPMP/LPMP && git -C LPMP checkout 6ec78c5   # commit COPS pins
#   git clone https://github.com/Tessil/robin-map                           # LPMP's submodule
#   dev/lpmp_gaec/build.sh LPMP robin-map /tmp/lpmp_gaec_driver
#
# Flags as COPS's install built LPMP (CMake Release: -O3 -DNDEBUG; LPMP adds -march=native).
# shim/multicut/multicut_instance.h replaces LPMP's multicut_instance (same edge storage) so that
# only the GAEC sources and their two headers (dynamic_graph.hxx, union_find.hxx) are compiled,
# without LPMP's other submodules.
set -euo pipefail
LPMP=${1:?LPMP checkout}; ROBIN=${2:?robin-map checkout}; OUT=${3:-lpmp_gaec_driver}
HERE=$(cd "$(dirname "$0")" && pwd)
${CXX:-g++} -std=c++17 -O3 -march=native -DNDEBUG -I"$HERE/shim" -I"$LPMP/include" -I"$ROBIN/include" \
  "$HERE/lpmp_gaec_driver.cpp" \
  "$LPMP/src/asymmetric_multiway_cut/asymmetric_multiway_cut_gaec.cpp" \
  "$LPMP/src/asymmetric_multiway_cut/asymmetric_multiway_cut_instance.cpp" -o "$OUT"
