"""One model replica: the Azure ML scoring-script contract (init()/run()) over HTTP."""
