'use strict';

// osls plugin (listed in serverless.yml after serverless-python-requirements): once every
// function's zip holds its code and its dependencies, compile every module in it with the
// Lambda runtime's own Python (devkit/bytecode.py), so a cold start loads bytecode instead of
// compiling from source in the read-only /var/task. The interpreter is $LAMBDA_PYTHON, else
// `python3.12` (the version comes from provider.runtime); a different version is refused.

const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

class LambdaBytecode {
  constructor(serverless, options) {
    this.serverless = serverless;
    this.options = options || {};
    const compile = () => this.compile();
    this.hooks = {
      'after:package:createDeploymentArtifacts': compile,
      'after:deploy:function:packageFunction': compile,
    };
  }

  compile() {
    const service = this.serverless.service;
    const runtime = String(service.provider.runtime || '').replace(/^python/, '');
    const artifacts = service
      .getAllFunctions()
      .map((name) => (service.getFunction(name).package || {}).artifact)
      .filter((artifact) => artifact && fs.existsSync(artifact));
    if (artifacts.length === 0) return;
    const python = process.env.LAMBDA_PYTHON || `python${runtime}`;
    const script = path.join(this.serverless.config.servicePath, 'devkit', 'bytecode.py');
    const done = spawnSync(python, [script, '--runtime', runtime, '--zip', ...artifacts], {
      stdio: 'inherit',
    });
    const compiling = `Compiling the packages' bytecode with ${python}`;
    // Killed (a timeout, the OOM killer): the interpreter is not the cause, so no advice on it.
    if (done.signal) {
      throw new this.serverless.classes.Error(`${compiling} was killed by ${done.signal}`);
    }
    if (done.error || done.status !== 0) {
      throw new this.serverless.classes.Error(
        `${compiling} failed` +
          (done.error ? `: ${done.error.message}` : ` (exit ${done.status})`) +
          `; set LAMBDA_PYTHON to a Python ${runtime} interpreter.`
      );
    }
  }
}

module.exports = LambdaBytecode;
