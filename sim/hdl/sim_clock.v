// The simulation clock, generated in HDL so that a long run needs no Python in every cycle:
// low at time 0, a rising edge every PERIOD time units (half a period high, half low).
`timescale 1ns/1ps
module tandem_sim_clock #(
    parameter HALF_PERIOD = 5
) (
    output reg clk
);
    initial clk = 1'b0;
    always #HALF_PERIOD clk = ~clk;
endmodule
