'use strict';

// osls plugin (listed in serverless.yml): the `local` stage takes its settings from the shell
// environment (`${env:…}` in params.local), for `invoke local` and `offline start` only. Packaging
// or deploying it would ship whatever that shell holds, so both are refused here.

const LOCAL_STAGE = 'local';

class LocalStageGuard {
  constructor(serverless, options) {
    this.serverless = serverless;
    this.options = options || {};
    const refuse = () => this.refuse();
    this.hooks = {
      'before:package:initialize': refuse,
      'before:deploy:deploy': refuse,
      'before:deploy:function:initialize': refuse,
    };
  }

  refuse() {
    const stage = this.serverless.getProvider('aws').getStage();
    if (String(stage) !== LOCAL_STAGE) return;
    throw new this.serverless.classes.Error(
      `The "${LOCAL_STAGE}" stage reads its settings from the shell environment and is only for ` +
        '`invoke local` and `offline start`; deploy a real stage (its settings come from SSM), ' +
        'e.g. `npx osls deploy --stage prod`.'
    );
  }
}

module.exports = LocalStageGuard;
