#!/usr/bin/env python3
"""A VASP stand-in for tests: label the POSCAR with a cheap real calculator, write VASP's files.

Run it where VASP would run (custodian or ``subprocess`` starts it in the job directory):
it reads ``INCAR``, ``POSCAR``, ``KPOINTS`` and ``POTCAR`` (or ``POTCAR.spec``, what
atomate2 writes with ``potcar_spec=True``), computes energy, forces and stress of the POSCAR
structure with ASE's EMT (default) or GFN1-xTB (tblite), and writes what atomate2's parser
reads: ``vasprun.xml``, ``OUTCAR``, ``OSZICAR``, ``CONTCAR`` and ``vasp.out`` text on stdout.

Only what matters for labels is emulated, the way VASP does it:
- energies: the calculator's (``--energy-shift`` added, to emulate a reference with another
  energy zero); no smearing, so free energy = energy without entropy = energy(sigma->0);
- forces in eV/A; stress only when ISIF >= 1 (VASP computes none for ISIF = 0), written
  in kbar with VASP's sign (positive = compressive: ``kbar = -10 * stress_ASE / GPa``);
- one SCF step, one ionic step; a run that would move ions (NSW > 0 with IBRION != -1) is
  refused (non-zero exit, as a crashed VASP), as is one without POSCAR, INCAR or a
  POTCAR/POTCAR.spec.

Failures, on request (for the failure-handling tests), the way real VASP shows them:
- ``--scf-fails-with ALGOS``: with these ALGO values (comma-separated, case-insensitive;
  ``any`` for every ALGO) the SCF stops at NELM electronic steps without converging: NELM
  ``<scstep>`` in vasprun.xml, NELM lines in OSZICAR, an energy still sloshing (the
  result is off by ``UNCONVERGED_ERROR`` eV), exit status 0, as VASP does for a static run. pymatgen then
  reads ``converged_electronic = False`` and custodian's ``UnconvergedErrorHandler`` steps
  ALGO up (Fast -> Normal -> All).
- ``--crash``: the run dies (exit status 1) after the OUTCAR header, with a Fortran runtime
  error on stderr and no vasprun.xml, OSZICAR or CONTCAR.
- ``--faulty-runs SPEC --run-counter FILE``: only these runs fail, counted over every run
  that shares FILE (one line, the number of runs so far): ``2-`` from the second run on,
  ``1`` the first only, ``2-3``. Without them every run fails as asked.

No eigenvalues or DOS are written (emmet logs "Error in parsing bandstructure" and leaves
the band gap empty). It imports only numpy and ASE (tblite when asked for), so each call costs well under a
second. ``python fake_vasp.py --help`` lists the options.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

#: bands reported (no eigenvalues are written: there is no band structure to emulate)
NBANDS = 1
#: eV by which an unconverged SCF's energy is off (alternating sign per step: sloshing)
UNCONVERGED_ERROR = 0.01
#: what a crashed run prints on stderr (a Fortran runtime error, as ifort-built VASP does)
CRASH_MESSAGE = ("forrtl: severe (174): SIGSEGV, segmentation fault occurred\n"
                 "fake VASP: simulated crash (--crash)")
_BOOL = {".TRUE.": True, "T": True, "TRUE": True, ".FALSE.": False, "F": False, "FALSE": False}


# -- inputs ----------------------------------------------------------------------------------
def _value(text: str):
    """An INCAR value as VASP reads it: bool, int, float, list of numbers or string."""
    words = text.split()
    expanded: list[str] = []
    for word in words:  # VASP's "4*0.6" repetition
        match = re.fullmatch(r"(\d+)\*(\S+)", word)
        expanded.extend([match.group(2)] * int(match.group(1)) if match else [word])
    values = []
    for word in expanded:
        if word.upper() in _BOOL:
            values.append(_BOOL[word.upper()])
            continue
        try:
            values.append(int(word))
        except ValueError:
            try:
                values.append(float(word))
            except ValueError:
                return text.strip()
    return values[0] if len(values) == 1 else values


def read_incar(path: Path) -> dict:
    """INCAR tags (upper case) -> values; comments (# !) and ';'-separated tags handled."""
    tags: dict = {}
    for raw in path.read_text().splitlines():
        line = re.split(r"[#!]", raw, maxsplit=1)[0]
        for part in line.split(";"):
            if "=" in part:
                key, text = part.split("=", 1)
                tags[key.strip().upper()] = _value(text)
    return tags


def potcar_titles(symbols: list[str]) -> list[str]:
    """POTCAR titles per species: from POTCAR (TITEL), POTCAR.spec, else refuse as VASP does."""
    if Path("POTCAR").is_file():
        titles = re.findall(r"TITEL\s*=\s*(.+)", Path("POTCAR").read_text())
        return [t.strip() for t in titles]
    if Path("POTCAR.spec").is_file():
        names = Path("POTCAR.spec").read_text().split()
        return [f"PAW_PBE {name} (fake)" for name in names]
    raise SystemExit("fake VASP: no POTCAR or POTCAR.spec in the run directory; "
                     f"VASP cannot run without one (species {symbols})")


def read_kpoints() -> tuple[str, list[int]]:
    """Generation style and divisions of an automatic KPOINTS file (Gamma 1 1 1 if absent)."""
    path = Path("KPOINTS")
    if not path.is_file():
        return "Gamma", [1, 1, 1]
    lines = path.read_text().splitlines()
    style = "Gamma" if lines[2].strip()[:1].upper() == "G" else "Monkhorst-Pack"
    return style, [int(x) for x in lines[3].split()[:3]]


def species_blocks(symbols: list[str]) -> list[tuple[str, int]]:
    """Consecutive runs of one element, as in the POSCAR's species and counts lines."""
    blocks: list[tuple[str, int]] = []
    for symbol in symbols:
        if blocks and blocks[-1][0] == symbol:
            blocks[-1] = (symbol, blocks[-1][1] + 1)
        else:
            blocks.append((symbol, 1))
    return blocks


# -- calculator ------------------------------------------------------------------------------
def calculator(name: str):
    if name == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    if name == "gfn1-xtb":
        from tblite.ase import TBLite

        return TBLite(method="GFN1-xTB", verbosity=0)
    raise SystemExit(f"fake VASP: unknown calculator {name!r} (emt, gfn1-xtb)")


# -- outputs ---------------------------------------------------------------------------------
def _row(values, fmt: str = "{:16.8f}") -> str:
    return " ".join(fmt.format(float(v)) for v in values)


def _xml_param(name: str, value) -> str:
    if isinstance(value, bool):
        return f'  <i type="logical" name="{name}"> {"T" if value else "F"}  </i>'
    if isinstance(value, int):
        return f'  <i type="int" name="{name}">{value:6d}</i>'
    if isinstance(value, float):
        return f'  <i name="{name}">{value:16.8f}</i>'
    if isinstance(value, list):
        kind = ' type="int"' if all(isinstance(v, int) and not isinstance(v, bool)
                                    for v in value) else ""
        text = " ".join(str(v) if kind else f"{float(v):.8f}" for v in value)
        return f'  <v{kind} name="{name}">{text}</v>'
    return f'  <i type="string" name="{name}">{escape(str(value))}</i>'


def _xml_structure(atoms, name: str | None) -> str:
    cell = np.asarray(atoms.get_cell())
    rec = np.linalg.inv(cell).T
    label = f' name="{name}"' if name else ""
    basis = "\n".join(f"    <v>{_row(v, '{:22.16f}')} </v>" for v in cell)
    rec_basis = "\n".join(f"    <v>{_row(v, '{:22.16f}')} </v>" for v in rec)
    frac = np.linalg.solve(cell.T, atoms.get_positions().T).T
    positions = "\n".join(f"   <v>{_row(v, '{:22.16f}')} </v>" for v in frac)
    return (f' <structure{label} >\n  <crystal>\n   <varray name="basis" >\n{basis}\n'
            f'   </varray>\n   <i name="volume">{atoms.get_volume():16.8f} </i>\n'
            f'   <varray name="rec_basis" >\n{rec_basis}\n   </varray>\n  </crystal>\n'
            f'  <varray name="positions" >\n{positions}\n  </varray>\n </structure>')


def _mesh(style: str, divisions: list[int]) -> np.ndarray:
    """Every k-point of the mesh (ISYM = 0 runs use the full mesh)."""
    axes = [(np.arange(n) + (0.0 if style == "Gamma" or n % 2 else 0.5)) / n
            for n in divisions]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    return grid - np.round(grid)


def _energies_xml(energy: float, indent: str) -> str:
    return "\n".join(f'{indent}<i name="{k}">{energy:16.8f} </i>'
                     for k in ("e_fr_energy", "e_wo_entrp", "e_0_energy"))


def write_vasprun(atoms, incar: dict, parameters: dict, titles: list[str], kpoints,
                  energy: float, forces: np.ndarray, stress_kbar: np.ndarray | None,
                  elapsed: float, scf_energies: list[float] | None = None) -> None:
    """vasprun.xml; ``scf_energies``: the energy of each electronic step (default: one
    step at ``energy``; VASP reports the last step's energy as the result)."""
    symbols = atoms.get_chemical_symbols()
    blocks = species_blocks(symbols)
    style, divisions = kpoints
    mesh = _mesh(style, divisions)
    atom_rows, type_rows = [], []
    for i, (symbol, count) in enumerate(blocks):
        type_rows.append(f"    <rc><c>{count:4d}</c><c>{symbol:2s}</c><c>{1.0:16.8f}</c>"
                         f"<c>{1.0:16.8f}</c><c>  {escape(titles[min(i, len(titles) - 1)])}"
                         f"</c></rc>")
        atom_rows.extend(f"    <rc><c>{symbol:2s}</c><c>{i + 1:4d}</c></rc>" for _ in range(count))
    energies = _energies_xml(energy, "   ")
    scsteps = "\n".join(
        f'  <scstep>\n   <time name="total">{elapsed:8.2f} {elapsed:8.2f}</time>\n'
        f'   <energy>\n{_energies_xml(e, "    ")}\n   </energy>\n  </scstep>'
        for e in (scf_energies or [energy]))
    stress_xml = "" if stress_kbar is None else (
        ' <varray name="stress" >\n' + "\n".join(f"   <v>{_row(v)} </v>" for v in stress_kbar)
        + "\n  </varray>\n")
    text = f"""<?xml version="1.0" encoding="ISO-8859-1"?>
<modeling>
 <generator>
  <i name="program" type="string">vasp </i>
  <i name="version" type="string">6.4.2 </i>
  <i name="subversion" type="string">fake VASP (atomate2-otf tests) </i>
  <i name="platform" type="string">LinuxGNU </i>
  <i name="date" type="string">{datetime.now():%Y %m %d} </i>
  <i name="time" type="string">{datetime.now():%H:%M:%S} </i>
 </generator>
 <incar>
{chr(10).join(_xml_param(k, v) for k, v in incar.items())}
 </incar>
 <kpoints>
  <generation param="{style}">
   <v type="int" name="divisions">{_row(divisions, '{:8.0f}')} </v>
   <v name="usershift">{_row([0, 0, 0])} </v>
  </generation>
  <varray name="kpointlist" >
{chr(10).join(f"   <v>{_row(k)} </v>" for k in mesh)}
  </varray>
  <varray name="weights" >
{chr(10).join(f"   <v>{1.0 / len(mesh):16.8f} </v>" for _ in mesh)}
  </varray>
 </kpoints>
 <parameters>
  <separator name="general" >
{chr(10).join(_xml_param(k, v) for k, v in parameters.items())}
  </separator>
 </parameters>
 <atominfo>
  <atoms>{len(atoms):8d} </atoms>
  <types>{len(blocks):8d} </types>
  <array name="atoms" >
   <dimension dim="1">ion</dimension>
   <field type="string">element</field>
   <field type="int">atomtype</field>
   <set>
{chr(10).join(atom_rows)}
   </set>
  </array>
  <array name="atomtypes" >
   <dimension dim="1">type</dimension>
   <field type="int">atomspertype</field>
   <field type="string">element</field>
   <field>mass</field>
   <field>valence</field>
   <field type="string">pseudopotential</field>
   <set>
{chr(10).join(type_rows)}
   </set>
  </array>
 </atominfo>
{_xml_structure(atoms, "initialpos")}
 <calculation>
{scsteps}
{_xml_structure(atoms, None)}
  <varray name="forces" >
{chr(10).join(f"   <v>{_row(f)} </v>" for f in forces)}
  </varray>
 {stress_xml}  <energy>
{energies}
  </energy>
  <time name="totalsc">{elapsed:8.2f} {elapsed:8.2f}</time>
 </calculation>
{_xml_structure(atoms, "finalpos")}
</modeling>
"""
    Path("vasprun.xml").write_text(text)


def outcar_header(atoms, incar: dict, titles: list[str], kpoints) -> list[str]:
    """The OUTCAR lines VASP writes before the first electronic step."""
    blocks = species_blocks(atoms.get_chemical_symbols())
    lines = [" vasp.6.4.2 fake VASP (atomate2-otf tests)",
             f" executed on             LinuxGNU date {datetime.now():%Y.%m.%d  %H:%M:%S}",
             " running on    1 total cores",
             " distrk:  each k-point on    1 cores,    1 groups",
             " distr:  one band on    1 cores,    1 groups"]
    lines += [f" POTCAR:    {titles[min(i, len(titles) - 1)]}" for i in range(len(blocks))] * 2
    echo = {"ISPIN": 1, "NSW": 0, "IBRION": -1, "ISIF": 2, "ISYM": 2, "ISMEAR": 1}
    lines += [f"   {key:<7s}= {int(incar.get(key, default)):6d}" for key, default in echo.items()]
    lines += [f"   ENCUT  = {float(incar.get('ENCUT', 400.0)):8.1f} eV",
              f"   SIGMA  = {float(incar.get('SIGMA', 0.2)):8.2f}",
              "   ions per type =        " + "  ".join(str(n) for _, n in blocks)]
    mesh = _mesh(*kpoints)
    lines += [f"   k-points           NKPTS = {len(mesh):6d}   k-points in BZ     NKDIM = "
              f"{len(mesh):6d}   number of bands    NBANDS= {NBANDS:6d}",
              "   total plane-waves  NPLWV =   4096", "",
              " k-points in reciprocal lattice and weights: fake VASP"]
    lines += [f"  {_row(k, '{:12.8f}')} {1.0 / len(mesh):12.8f}" for k in mesh]
    return lines


def write_outcar(atoms, incar: dict, titles: list[str], kpoints, energy: float,
                 forces: np.ndarray, stress_kbar: np.ndarray | None, elapsed: float,
                 n_scf: int = 1) -> None:
    """The OUTCAR lines that pymatgen's Outcar and ASE's OUTCAR reader look for."""
    lines = outcar_header(atoms, incar, titles, kpoints)
    for step in range(1, n_scf + 1):
        lines += ["", f"--------------------------------------- Iteration      1({step:4d})  "
                  "---------------------------------------", ""]
    if stress_kbar is not None:
        s = stress_kbar
        order = [s[0, 0], s[1, 1], s[2, 2], s[0, 1], s[1, 2], s[2, 0]]
        volume = atoms.get_volume()
        total_ev = [v * volume / 1602.1766208 for v in order]  # kbar * A^3 -> eV
        lines += ["  FORCE on cell =-STRESS in cart. coord.  units (eV):",
                  "  Direction    XX          YY          ZZ          XY          YZ          ZX",
                  "  " + "-" * 86,
                  "  Total   " + " ".join(f"{v:11.5f}" for v in total_ev),
                  "  in kB   " + " ".join(f"{v:11.5f}" for v in order),
                  f"  external pressure = {np.trace(s) / 3:11.2f} kB  Pullay stress =  0.00 kB",
                  ""]
    cell = np.asarray(atoms.get_cell())
    rec = np.linalg.inv(cell).T
    lines += ["      direct lattice vectors                 reciprocal lattice vectors"]
    lines += ["  " + _row(a, "{:13.9f}") + "  " + _row(b, "{:13.9f}") for a, b in zip(cell, rec)]
    lines += ["", " POSITION                                       TOTAL-FORCE (eV/Angst)",
              " " + "-" * 83]
    lines += [" " + _row(p, "{:12.5f}") + "    " + _row(f, "{:14.6f}")
              for p, f in zip(atoms.get_positions(), forces)]
    drift = forces.sum(axis=0)
    lines += [" " + "-" * 83,
              f"    total drift:                         {_row(drift, '{:13.6f}')}", "",
              "  FREE ENERGIE OF THE ION-ELECTRON SYSTEM (eV)",
              "  ---------------------------------------------------",
              f"  free  energy   TOTEN  = {energy:18.8f} eV", "",
              f"  energy  without entropy= {energy:18.8f}  energy(sigma->0) = {energy:18.8f}",
              "", "",
              " General timing and accounting informations for this job:",
              " ========================================================", "",
              f"                  Total CPU time used (sec):{elapsed:14.3f}",
              f"                            User time (sec):{elapsed:14.3f}",
              f"                          System time (sec):{0.0:14.3f}",
              f"                         Elapsed time (sec):{elapsed:14.3f}", "",
              "                   Maximum memory used (kb):       10000.",
              "                   Average memory used (kb):          N/A", ""]
    Path("OUTCAR").write_text("\n".join(lines) + "\n")


def write_oszicar(energy: float, scf_energies: list[float] | None = None) -> None:
    """OSZICAR: one line per electronic step (DAV, as VASP's first steps), then F= E0=."""
    lines = ["       N       E                     dE             d eps       ncg     rms"
             "          rms(c)"]
    previous = 0.0
    for step, e in enumerate(scf_energies or [energy], start=1):
        lines.append(f"DAV: {step:3d}    {e: .12E}   {e - previous: .5E}   {0.0: .5E}    16"
                     f"   0.000E+00")
        previous = e
    lines.append(f"   1 F= {energy: .8E} E0= {energy: .8E}  d E ={0.0: .6E}")
    Path("OSZICAR").write_text("\n".join(lines) + "\n")


def faulty_run(spec: str | None, counter: str | None) -> bool:
    """Whether this run is one of the ``--faulty-runs`` (counting it in ``--run-counter``)."""
    if counter is None:
        if spec is not None:
            raise SystemExit("fake VASP: --faulty-runs needs --run-counter")
        return True
    path = Path(counter)
    number = (int(path.read_text().strip() or 0) if path.is_file() else 0) + 1
    path.write_text(f"{number}\n")
    if spec is None:
        return True
    first, dash, last = spec.partition("-")
    low = int(first)
    high = (int(last) if last else None) if dash else low
    return number >= low and (high is None or number <= high)


def crash(atoms, incar: dict, titles: list[str], kpoints) -> int:
    """Die as a segfaulting VASP does: OUTCAR header written, no results, exit status 1."""
    Path("OUTCAR").write_text("\n".join(outcar_header(atoms, incar, titles, kpoints)) + "\n")
    print(" entering main loop", flush=True)
    print(CRASH_MESSAGE, file=sys.stderr, flush=True)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calculator", default="emt", choices=["emt", "gfn1-xtb"])
    parser.add_argument("--energy-shift", type=float, default=0.0,
                        help="eV added to the total energy (another reference's energy zero)")
    parser.add_argument("--scf-fails-with", default="", metavar="ALGOS",
                        help="ALGO values (comma-separated, or 'any') with which the SCF "
                             "hits NELM without converging")
    parser.add_argument("--crash", action="store_true",
                        help="die with exit status 1 after the OUTCAR header")
    parser.add_argument("--faulty-runs", default=None, metavar="SPEC",
                        help="only these runs fail: N, N-M or N- (needs --run-counter)")
    parser.add_argument("--run-counter", default=None, metavar="FILE",
                        help="file counting the runs (shared between job directories)")
    args = parser.parse_args(argv)

    from ase.io import read, write
    from ase.units import GPa

    started = time.perf_counter()
    for required in ("INCAR", "POSCAR"):
        if not Path(required).is_file():
            raise SystemExit(f"fake VASP: no {required} in {Path.cwd()}")
    incar = read_incar(Path("INCAR"))
    nsw, ibrion = int(incar.get("NSW", 0)), int(incar.get("IBRION", -1))
    if nsw > 0 and ibrion != -1:
        raise SystemExit(f"fake VASP: only single points are emulated, got NSW={nsw} "
                         f"IBRION={ibrion}")
    atoms = read("POSCAR", format="vasp")
    titles = potcar_titles(atoms.get_chemical_symbols())
    kpoints = read_kpoints()
    print(" running on    1 total cores")
    print(f" fake VASP: {args.calculator} single point of {atoms.get_chemical_formula()}")
    faulty = (args.crash or args.scf_fails_with) and faulty_run(args.faulty_runs,
                                                                  args.run_counter)
    if faulty and args.crash:
        return crash(atoms, incar, titles, kpoints)
    algo = str(incar.get("ALGO", "Normal")).lower()
    failing_algos = {a.strip().lower() for a in args.scf_fails_with.split(",") if a.strip()}
    unconverged = bool(faulty) and ("any" in failing_algos or algo in failing_algos)

    atoms.calc = calculator(args.calculator)
    energy = float(atoms.get_potential_energy()) + args.energy_shift
    forces = np.asarray(atoms.get_forces())
    isif = int(incar.get("ISIF", 2))
    stress_kbar = None
    if isif >= 1:
        stress_kbar = -np.asarray(atoms.get_stress(voigt=False)) / (0.1 * GPa)
    nelm = int(incar.get("NELM", 60))
    scf_energies = None
    if unconverged:  # NELM steps, the energy sloshing by +-UNCONVERGED_ERROR, last one +
        scf_energies = [energy + UNCONVERGED_ERROR * (-1) ** (nelm - 1 - step)
                        for step in range(nelm)]
        energy = scf_energies[-1]
        print(f" fake VASP: SCF not converged in NELM = {nelm} steps (ALGO = {algo})")
    elapsed = time.perf_counter() - started

    parameters = {"PREC": str(incar.get("PREC", "normal")).lower(),
                  "ENMAX": float(incar.get("ENCUT", 400.0)),
                  "ISPIN": int(incar.get("ISPIN", 1)), "NELM": nelm,
                  "EDIFF": float(incar.get("EDIFF", 1e-4)), "ISMEAR": int(incar.get("ISMEAR", 1)),
                  "SIGMA": float(incar.get("SIGMA", 0.2)), "IBRION": ibrion, "NSW": nsw,
                  "ISIF": isif, "ISYM": int(incar.get("ISYM", 2)),
                  "GGA": str(incar.get("GGA", "--")), "LHFCALC": False,
                  "LDAU": bool(incar.get("LDAU", False)), "LORBIT": int(incar.get("LORBIT", 0)),
                  "LEPSILON": False, "LOPTICS": False, "LCHIMAG": False, "IVDW": 0,
                  "LUSE_VDW": False, "NELECT": 0.0, "NBANDS": NBANDS}
    write_vasprun(atoms, incar, parameters, titles, kpoints, energy, forces, stress_kbar,
                  elapsed, scf_energies)
    write_outcar(atoms, incar, titles, kpoints, energy, forces, stress_kbar, elapsed,
                 len(scf_energies or [energy]))
    write_oszicar(energy, scf_energies)
    write("CONTCAR", atoms, format="vasp", direct=True)
    print(" writing wavefunctions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
