#!/usr/bin/env bash
# README "Try it": install pkiform and run it on the built-in kubeadm example (no VMs needed).
# plan → apply → plan again (no changes) → preview a zero-downtime rotation of the etcd CA.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e .
example=examples/kubeadm

echo "### pkiform -C $example plan  (first lines)"
pkiform -C "$example" plan | head -n 25
echo "    …"
echo
echo "### pkiform -C $example apply --auto-approve"
pkiform -C "$example" apply --auto-approve | tail -n 12
echo
echo "### pkiform -C $example plan --detailed-exitcode"
pkiform -C "$example" plan --detailed-exitcode
echo
echo "### files written under $example/target/control-1:"
find "$example/target/control-1" -type f | sort | sed 's/^/  /'
echo
echo "### pkiform -C $example plan --replace ca.etcd  (summary)"
pkiform -C "$example" plan --replace ca.etcd | grep -E '^(Phase|Plan:|trust:)|After this phase'
