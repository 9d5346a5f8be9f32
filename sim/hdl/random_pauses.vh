// The random pauses of the simulation memory and link models (hbm_model.v, ring_link.v),
// written once. Included inside a module that declares `localparam RATE_ARG`, the plusarg
// format of its rate (e.g. "hbm_rate=%d"). Declares:
//   rate  the probability x 256 that a pausing channel moves in a cycle, from +<RATE_ARG>,
//         default 256 (never pauses);
//   seed  from +seed=N, default 0, mixed with the module's SEED parameter by the includer;
//   xorshift(x), from xorshift32.vh.
    reg [8:0] rate;
    reg [31:0] seed;
    initial begin
        if (!$value$plusargs(RATE_ARG, rate))
            rate = 256;
        if (!$value$plusargs("seed=%d", seed))
            seed = 0;
    end

`include "xorshift32.vh"
