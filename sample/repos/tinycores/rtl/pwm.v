// tc_pwm: pulse-width modulator.
// A free-running WIDTH-bit counter sets the period (2**WIDTH cycles); out is
// high while the counter is below duty, so duty = 0 gives a constant low and
// duty = 2**WIDTH - 1 a high pulse on all but one cycle. A new duty value is
// taken only at the start of a period so that pulses are never cut short.
module tc_pwm #(
    parameter WIDTH = 8
) (
    input              clk,
    input              rst,
    input  [WIDTH-1:0] duty,
    output reg         out
);
    reg [WIDTH-1:0] cnt;
    reg [WIDTH-1:0] duty_q;

    always @(posedge clk) begin
        if (rst) begin
            cnt    <= 0;
            duty_q <= 0;
            out    <= 1'b0;
        end else begin
            cnt <= cnt + 1'b1;
            if (cnt == {WIDTH{1'b1}})
                duty_q <= duty;
            out <= (cnt < duty_q);
        end
    end
endmodule
