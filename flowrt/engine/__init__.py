"""The message-processing engine: exchange, compiled expressions, steps, pipeline runner.

Public surface (import from the modules; this package imports nothing, so that the DSL
validator can read the step specs without loading the runner)::

    from flowrt.engine.exchange import Exchange          # one message in flight
    from flowrt.engine.pipeline import compile_flow      # Flow -> Pipeline, once, at load
    from flowrt.engine.runner import Runner              # Pipeline + MPL + deliver -> results

    pipeline = compile_flow(flow)                        # FlowError if a script won't import
    runner = Runner(pipeline, recorder, deliver, version="3")
    result = await runner.process(exchange)              # Result(status, runs, sent, ...)
    result = runner.record_unreadable(exc)               # a mail that never became an exchange

Each step lives in ``flowrt.engine.steps.<name>`` with its ``SPEC``, model, grammar rule,
transform and ``compile``. Script authors import from :mod:`flowrt` itself.
"""

# The package re-exports nothing (importing it stays cheap): its modules are its public face.
__all__: list[str] = []
