"""Flow test results as JUnit XML, the format CI systems read."""

from __future__ import annotations

from collections.abc import Sequence
from xml.etree import ElementTree as ET

from flowrt.flowtest.run import FileResult

__all__ = ["junit_xml"]


def junit_xml(results: Sequence[FileResult], errors: Sequence[tuple[str, str]] = ()) -> bytes:
    """One testsuite per test file; a file that could not be run is a suite with an error."""
    root = ET.Element("testsuites", name="flowrt check")
    for result in results:
        failed = sum(not c.ok for c in result.cases)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=f"{result.path} ({result.flow})",
            tests=str(len(result.cases)),
            failures=str(failed),
            errors="0",
            time=f"{sum(c.seconds for c in result.cases):.3f}",
        )
        for case in result.cases:
            element = ET.SubElement(
                suite,
                "testcase",
                classname=result.flow,
                name=case.name,
                file=result.path,
                line=str(case.line),
                time=f"{case.seconds:.3f}",
            )
            if case.failures:
                failure = ET.SubElement(element, "failure", message=case.failures[0])
                failure.text = "\n".join(case.failures)
    for path, message in errors:
        suite = ET.SubElement(
            root, "testsuite", name=path, tests="1", failures="0", errors="1", time="0"
        )
        load = ET.SubElement(suite, "testcase", classname=path, name="load")
        error = ET.SubElement(load, "error", message=message.splitlines()[0])
        error.text = message
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data + b"\n"
